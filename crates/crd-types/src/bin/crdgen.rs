//! Writes every CRD to `manifests/crds/` (one file per kind), or with `--check`, fails when
//! the committed files differ from what the types generate.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let check = std::env::args().any(|a| a == "--check");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../manifests/crds");
    let sets = [("", crd_types::orrery_crds())];
    let mut stale = Vec::new();
    for (subdir, crds) in sets {
        let dir = root.join(subdir);
        for crd in crds {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let path = dir.join(format!("{name}.yaml"));
            let yaml = match crd_types::to_yaml(&crd) {
                Ok(yaml) => yaml,
                Err(err) => {
                    eprintln!("cannot render {name}: {err}");
                    return ExitCode::FAILURE;
                }
            };
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current == yaml {
                continue;
            }
            if check {
                stale.push(path.display().to_string());
            } else if let Err(err) = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, yaml)) {
                eprintln!("cannot write {}: {err}", path.display());
                return ExitCode::FAILURE;
            } else {
                println!("wrote {}", path.display());
            }
        }
    }
    if !stale.is_empty() {
        eprintln!(
            "generated CRDs differ from the committed ones; run `just crdgen` and commit:\n  {}",
            stale.join("\n  ")
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
