# Writes a container image as a docker-archive tar (what `docker save` writes and
# `ctr image import` reads) from a directory, without a container daemon: one layer, a config,
# a manifest. Sourced by images/build.sh and e2e/node/images.sh.
#
#   write_image OUT.tar "NAME:TAG [NAME:TAG...]" ROOTFS_DIR CONFIG_JSON
#
# CONFIG_JSON is the image's runtime config object, e.g. '{"Entrypoint":["/controller"]}'.
# The layer is reproducible: sorted names, root ownership, a fixed time.
write_image() {
  local out=$1 refs=$2 rootfs=$3 config=$4
  local work
  work=$(mktemp -d)
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$rootfs" -cf "$work/layer.tar" .
  local layer
  layer=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
  mv "$work/layer.tar" "$work/$layer.tar"
  printf '{"architecture":"amd64","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$config" "$layer" >"$work/config.json"
  local config_digest
  config_digest=$(sha256sum "$work/config.json" | cut -d' ' -f1)
  mv "$work/config.json" "$work/$config_digest.json"
  local tags
  tags=$(printf '"%s",' $refs)
  printf '[{"Config":"%s.json","RepoTags":[%s],"Layers":["%s.tar"]}]' \
    "$config_digest" "${tags%,}" "$layer" >"$work/manifest.json"
  tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work" \
    -cf "$out.tmp" manifest.json "$config_digest.json" "$layer.tar"
  mv "$out.tmp" "$out"
  rm -rf "$work"
}
