package main

// The real node's Kubernetes parts, built from the same k8s.io/kubernetes module as the API
// server, so one build gives matching versions of all of them:
//
//	control-plane kubelet ...         the kubelet (its own flags and --config)
//	control-plane kube-scheduler ...  kube-scheduler
//	control-plane kube-proxy ...      kube-proxy
//	control-plane supervise [--netns PATH] [--cgroup NAME] [--log FILE] -- COMMAND ARGS...
//
// supervise runs COMMAND (inside the network namespace PATH, in the cgroup NAME of every
// hierarchy, so what it leaves behind can be found and stopped) until its own parent goes away
// or it gets SIGTERM/SIGINT; then it stops COMMAND with SIGTERM, and SIGKILL 10 s later.

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client metrics, as the kubelet's own main registers them
	proxy "k8s.io/kubernetes/cmd/kube-proxy/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"
	kubelet "k8s.io/kubernetes/cmd/kubelet/app"
)

// runNodeCommand runs the node subcommand name, if it is one, and exits with its code.
func runNodeCommand(name string, args []string) bool {
	switch name {
	case "kubelet":
		// A nil context panics at start: the kubelet needs a real one.
		cmd := kubelet.NewKubeletCommand(context.Background())
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-scheduler":
		cmd := scheduler.NewSchedulerCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "kube-proxy":
		cmd := proxy.NewProxyCommand()
		cmd.SetArgs(args)
		os.Exit(cli.Run(cmd))
	case "supervise":
		os.Exit(supervise(args))
	}
	return false
}

func supervise(args []string) int {
	fs := flag.NewFlagSet("supervise", flag.ExitOnError)
	netns := fs.String("netns", "", "network namespace file to run the command in")
	cgroup := fs.String("cgroup", "", "cgroup (relative to each hierarchy's root) to run the command in")
	logPath := fs.String("log", "", "file for the command's output (default: ours)")
	_ = fs.Parse(args)
	command := fs.Args()
	if len(command) == 0 {
		fmt.Fprintln(os.Stderr, "usage: control-plane supervise [--netns PATH] [--cgroup NAME] [--log FILE] -- COMMAND ARGS...")
		return 2
	}
	if *cgroup != "" {
		if err := joinCgroup(*cgroup); err != nil {
			fmt.Fprintln(os.Stderr, "supervise:", err)
			return 1
		}
	}
	if *netns != "" {
		command = append([]string{"nsenter", "--net=" + *netns, "--"}, command...)
	}
	cmd := exec.Command(command[0], command[1:]...)
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if *logPath != "" {
		f, err := os.OpenFile(*logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			fmt.Fprintln(os.Stderr, "supervise:", err)
			return 1
		}
		defer f.Close()
		cmd.Stdout, cmd.Stderr = f, f
	}
	// The command is stopped when we are, even by SIGKILL; the death signal belongs to the
	// thread that forks, so keep that thread.
	runtime.LockOSThread()
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "supervise:", err)
		return 1
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	parentGone := make(chan struct{})
	go func() {
		parent := os.Getppid()
		for os.Getppid() == parent {
			time.Sleep(500 * time.Millisecond)
		}
		close(parentGone)
	}()
	select {
	case err := <-done:
		return exitCode(err)
	case <-signals:
	case <-parentGone:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-done:
		return exitCode(err)
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		return exitCode(<-done)
	}
}

func exitCode(err error) int {
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		if code := exit.ExitCode(); code >= 0 {
			return code
		}
		return 1
	default:
		fmt.Fprintln(os.Stderr, "supervise:", err)
		return 1
	}
}

// joinCgroup moves this process into name under every mounted cgroup hierarchy (v1 and v2),
// creating it where it is missing.
func joinCgroup(name string) error {
	roots, err := cgroupRoots()
	if err != nil {
		return err
	}
	pid := []byte(strconv.Itoa(os.Getpid()))
	for _, root := range roots {
		dir := root
		for _, part := range strings.Split(filepath.Clean(name), "/") {
			parent := dir
			dir = filepath.Join(dir, part)
			if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
				return fmt.Errorf("cgroup %s: %w", dir, err)
			}
			// cgroup v1's cpuset takes no process until its CPUs and memory nodes are set.
			for _, file := range []string{"cpuset.cpus", "cpuset.mems"} {
				if value, err := os.ReadFile(filepath.Join(dir, file)); err == nil && strings.TrimSpace(string(value)) == "" {
					inherited, _ := os.ReadFile(filepath.Join(parent, file))
					_ = os.WriteFile(filepath.Join(dir, file), inherited, 0o644)
				}
			}
		}
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), pid, 0o644); err != nil {
			return fmt.Errorf("joining cgroup %s: %w", dir, err)
		}
	}
	return nil
}

// cgroupRoots are the mount points of the cgroup hierarchies, from /proc/self/mountinfo.
func cgroupRoots() ([]string, error) {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var roots []string
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		for i, f := range fields {
			if f == "-" && i+1 < len(fields) && (fields[i+1] == "cgroup" || fields[i+1] == "cgroup2") && len(fields) > 4 {
				roots = append(roots, fields[4])
			}
		}
	}
	return roots, nil
}
