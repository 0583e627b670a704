package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"

	"github.com/strata-snapshotter/strata/deploy/kubernetes"
)

// supervisor runs containerd the way systemd's containerd.service does
// (Restart=always): whenever it exits, it is started again with the same
// config file. There is no systemd here; this is its stand-in.
type supervisor struct {
	e       *Env
	cfg     string
	started chan int // the run number, each time a run has booted
	stop    chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	err     error
}

func (e *Env) superviseContainerd(cfg string) *supervisor {
	s := &supervisor{e: e, cfg: cfg, started: make(chan int, 16), stop: make(chan struct{}), done: make(chan struct{})}
	go s.loop()
	// Stop restarting before the teardown stops the last run.
	e.t.Cleanup(func() { close(s.stop); <-s.done })
	return s
}

func (s *supervisor) loop() {
	defer close(s.done)
	for n := 1; ; n++ {
		p, err := startProcErr(s.e.Dir, fmt.Sprintf("containerd-%d", n), filepath.Join(toolsBin, "containerd"), "--config", s.cfg)
		if err == nil {
			err = p.waitLogErr("containerd successfully booted", time.Minute)
		}
		s.mu.Lock()
		if p != nil {
			s.e.Containerd = p
		}
		s.err = err
		s.mu.Unlock()
		if err != nil {
			close(s.started)
			return
		}
		s.started <- n
		select {
		case <-p.exited:
		case <-s.stop:
			return
		}
	}
}

// waitStart waits until containerd's run number n has booted.
func (s *supervisor) waitStart(t *testing.T, n int, limit time.Duration) {
	t.Helper()
	select {
	case got, ok := <-s.started:
		if !ok {
			s.mu.Lock()
			defer s.mu.Unlock()
			t.Fatalf("containerd did not boot: %v", s.err)
		}
		if got != n {
			t.Fatalf("containerd run %d booted, want run %d", got, n)
		}
	case <-time.After(limit):
		t.Fatalf("containerd run %d did not boot within %v", n, limit)
	}
}

// eventually polls cond until it holds, failing after limit with what it
// last said. For states only a poll can see (a container's exit through
// CRI, a probe passing), as the kubelet polls them too.
func eventually(t *testing.T, limit time.Duration, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(limit)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", limit, last)
		}
		<-tick.C
	}
}

// TestDaemonSetOnNode does what the kubelet does when strata's DaemonSet
// lands on a node whose containerd knows nothing of strata, with the image
// `make image` builds and the DaemonSet's own arguments, mounts, propagation,
// host PID namespace and probe: the init container patches containerd's
// config and restarts containerd, strata serves from its container, and the
// node's containerd pulls and runs through it, with ctr and with a pod whose
// RuntimeClass handler is strata's. Then a rolling update: the init step
// runs again, leaves containerd alone, and a new strata container takes over
// while the workload keeps running.
//
// The DaemonSet's host paths are moved under the test's directory (the same
// move for mounts and arguments, so paths still mean the same inside and
// outside the pod), and the pods run on the host network, as nothing in
// them uses the pod network and the test has no CNI network.
func TestDaemonSetOnNode(t *testing.T) {
	m, err := kubernetes.Load()
	if err != nil {
		t.Fatal(err)
	}
	spec := m.DaemonSet.Spec.Template.Spec
	dir, err := os.MkdirTemp("", "si-")
	if err != nil {
		t.Fatal(err)
	}
	host := func(p string) string { return filepath.Join(dir, "host", p) }
	e := &Env{
		t:          t,
		Dir:        dir,
		StrataRoot: host("/var/lib/strata"),
		StrataSock: host("/run/strata/strata.sock"),
		Sock:       host("/run/containerd/containerd.sock"),
		opts:       EnvOptions{CRI: true, Unregistered: true},
	}
	t.Cleanup(e.teardown)
	// HostToContainer propagation needs the source on a shared mount, as /
	// is on a systemd node; here / is private, so the node's directory
	// becomes a shared mount of its own (the teardown unmounts it).
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("", dir, "", unix.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}
	var moves []string
	hostPaths := map[string]string{} // volume name -> host path
	for _, v := range spec.Volumes {
		if v.HostPath == nil {
			t.Fatalf("volume %s is not a hostPath", v.Name)
		}
		moves = append(moves, v.HostPath.Path, host(v.HostPath.Path))
		hostPaths[v.Name] = host(v.HostPath.Path)
		// The kubelet creates DirectoryOrCreate paths.
		if err := os.MkdirAll(host(v.HostPath.Path), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	move := strings.NewReplacer(moves...).Replace

	// The node before strata: CRI on overlayfs, nothing about strata.
	cfg := host("/etc/containerd/config.toml")
	if err := os.WriteFile(cfg, []byte(e.containerdConfig()), 0o644); err != nil {
		t.Fatal(err)
	}
	sup := e.superviseContainerd(cfg)
	sup.waitStart(t, 1, 2*time.Minute)

	// The image, as make image builds it, under the name the manifests use.
	image := "docker.io/library/" + m.Kustomization.Images[0].NewName + ":" + m.Kustomization.Images[0].NewTag
	archive := filepath.Join(dir, "strata.oci.tar")
	if out, err := e.combined("make", "-C", "..", "image", "GO_FROM_HOST=1", "IMAGE_OUTPUT=type=oci,dest="+archive+",name="+image); err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	e.run(filepath.Join(toolsBin, "ctr"), "--address", e.Sock, "--namespace", "k8s.io", "images", "import", archive)
	if images := e.crictl("images"); !strings.Contains(images, "strata-snapshotter") {
		t.Fatalf("CRI does not see the imported image:\n%s", images)
	}

	logDir := filepath.Join(dir, "pods")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if !spec.HostPID {
		t.Fatal("the DaemonSet does not run in the host's PID namespace")
	}
	pod := e.writeJSON("strata-pod.json", map[string]any{
		"metadata":      map[string]any{"name": m.DaemonSet.Name + "-node", "namespace": m.DaemonSet.Namespace, "uid": "strata-ds-pod", "attempt": 0},
		"log_directory": logDir,
		"labels":        m.DaemonSet.Spec.Template.Labels,
		"linux": map[string]any{"security_context": map[string]any{
			"privileged": true,
			// NODE (2) for the network and, as hostPID asks, for PIDs.
			"namespace_options": map[string]any{"network": 2, "pid": 2},
		}},
	})
	podID := strings.TrimSpace(e.crictl("runp", pod))

	// container writes the CRI config of one of the DaemonSet's containers.
	container := func(name string, attempt int) string {
		t.Helper()
		c, err := m.Container(name)
		if err != nil {
			t.Fatal(err)
		}
		var mounts []map[string]any
		for _, vm := range c.VolumeMounts {
			propagation := 0 // PROPAGATION_PRIVATE
			switch {
			case vm.MountPropagation == nil:
			case *vm.MountPropagation == corev1.MountPropagationHostToContainer:
				propagation = 1
			case *vm.MountPropagation == corev1.MountPropagationBidirectional:
				propagation = 2
			}
			mounts = append(mounts, map[string]any{"container_path": move(vm.MountPath), "host_path": hostPaths[vm.Name], "propagation": propagation, "readonly": vm.ReadOnly})
		}
		var args []string
		for _, a := range c.Args {
			args = append(args, move(a))
		}
		privileged := c.SecurityContext != nil && c.SecurityContext.Privileged != nil && *c.SecurityContext.Privileged
		cc := map[string]any{
			"metadata": map[string]any{"name": c.Name, "attempt": attempt},
			"image":    map[string]any{"image": image},
			"args":     args,
			"log_path": fmt.Sprintf("%s-%d.log", c.Name, attempt),
			"mounts":   mounts,
			"linux": map[string]any{"security_context": map[string]any{
				"privileged":        privileged,
				"namespace_options": map[string]any{"network": 2, "pid": 2},
			}},
		}
		if len(c.Command) > 0 {
			cc["command"] = c.Command
		}
		return e.writeJSON(fmt.Sprintf("%s-%d.json", c.Name, attempt), cc)
	}
	// runInit runs the init container to completion and returns its output.
	runInit := func(attempt int) string {
		t.Helper()
		cid := strings.TrimSpace(e.crictl("create", podID, container("containerd-config", attempt), pod))
		// The container may restart containerd before containerd has
		// answered the start: the call then fails Unavailable, the
		// container ran all the same, and the kubelet learns its exit from
		// the restarted containerd, as this does below.
		if out, err := e.try(e.crictlArgs("start", cid)...); err != nil && !strings.Contains(err.Error(), "code = Unavailable") {
			t.Fatalf("crictl start: %v\n%s", err, out)
		}
		eventually(t, 3*time.Minute, func() (bool, string) {
			out, err := e.try(e.crictlArgs("inspect", "-o", "json", cid)...)
			if err != nil {
				return false, err.Error() // containerd may be restarting
			}
			var st struct {
				Status struct {
					State    string `json:"state"`
					ExitCode int    `json:"exitCode"`
				} `json:"status"`
			}
			if err := json.Unmarshal([]byte(out), &st); err != nil {
				return false, err.Error()
			}
			if st.Status.State == "CONTAINER_EXITED" && st.Status.ExitCode != 0 {
				logs, _ := e.combined(e.crictlArgs("logs", cid)...)
				t.Fatalf("init container exited %d:\n%s", st.Status.ExitCode, logs)
			}
			return st.Status.State == "CONTAINER_EXITED", "init container " + st.Status.State
		})
		logs, err := e.combined(e.crictlArgs("logs", cid)...)
		if err != nil {
			t.Fatalf("crictl logs: %v\n%s", err, logs)
		}
		return logs
	}
	// runStrata starts the daemon's container and waits until its startup
	// probe passes, run as the kubelet runs it, inside the container.
	runStrata := func(attempt int) string {
		t.Helper()
		c, err := m.Container("strata")
		if err != nil {
			t.Fatal(err)
		}
		cid := strings.TrimSpace(e.crictl("create", podID, container("strata", attempt), pod))
		e.crictl("start", cid)
		var probe []string
		for _, a := range c.StartupProbe.Exec.Command {
			probe = append(probe, move(a))
		}
		eventually(t, 2*time.Minute, func() (bool, string) {
			out, err := e.try(e.crictlArgs(append([]string{"exec", "-s", cid}, probe...)...)...)
			if err != nil {
				return false, fmt.Sprintf("probe: %v %s", err, out)
			}
			return true, ""
		})
		return cid
	}

	// The init step: patch, restart containerd (run 2 boots), exit 0.
	first := runInit(0)
	if !strings.Contains(first, "changed") || !strings.Contains(first, "containerd restarted") {
		t.Fatalf("init container said:\n%s", first)
	}
	sup.waitStart(t, 2, 2*time.Minute)
	strataCID := runStrata(0)

	// The node's containerd pulls and runs through strata: ctr ...
	e.ctr("images", "pull", "--plain-http", "--hosts-dir", hostsDir, "--snapshotter", "strata", imgThreeLayers)
	if out := e.ctr("run", "--rm", "--snapshotter", "strata", "--net-host", imgThreeLayers, "ds-ctr", "cat", "/l3"); out != "layer 3\n" {
		t.Fatalf("ctr run printed %q", out)
	}
	if len(e.layerDirs()) == 0 {
		t.Fatal("no layers under strata's root on the host")
	}
	// ... and CRI, for a pod whose RuntimeClass names strata's handler
	// (the image was pulled for the default snapshotter; CRI unpacks it
	// into strata when the container is created).
	handler := m.RuntimeClass.Handler
	e.crictl("pull", imgThreeLayers)
	workPod := e.writeJSON("work-pod.json", map[string]any{
		"metadata":      map[string]any{"name": "workload", "namespace": "default", "uid": "workload-uid", "attempt": 0},
		"log_directory": logDir,
		"linux":         map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{"network": 2}}},
	})
	workPodID := strings.TrimSpace(e.crictl("runp", "--runtime", handler, workPod))
	work := e.writeJSON("work.json", map[string]any{
		"metadata": map[string]any{"name": "main"},
		"image":    map[string]any{"image": imgThreeLayers},
		"command":  []string{"/bin/sh", "-c", "sleep 3600"},
		"log_path": "work.log",
	})
	workID := strings.TrimSpace(e.crictl("create", workPodID, work, workPod))
	e.crictl("start", workID)
	for _, l := range rootLowerDirs(t, workID) {
		if !strings.HasPrefix(l, e.StrataRoot+"/") {
			t.Errorf("the %s pod's lower directory %s is not under strata's root %s", handler, l, e.StrataRoot)
		}
	}
	if out := strings.TrimSpace(e.crictl("exec", "-s", workID, "cat", "/l3")); out != "layer 3" {
		t.Fatalf("workload read %q", out)
	}

	// A rolling update: the old strata container goes, the init step runs
	// again and restarts nothing, the workload keeps running throughout, a
	// new strata container serves, and containerd reconnects by itself.
	e.crictl("stop", "--timeout", "30", strataCID)
	e.crictl("rm", strataCID)
	if out := strings.TrimSpace(e.crictl("exec", "-s", workID, "cat", "/l3")); out != "layer 3" {
		t.Fatalf("with strata stopped, the workload read %q", out)
	}
	again := runInit(1)
	if !strings.Contains(again, "unchanged") || strings.Contains(again, "restarted") {
		t.Fatalf("init container on update said:\n%s", again)
	}
	select {
	case n := <-sup.started:
		t.Fatalf("containerd was restarted (run %d) by an update of strata alone", n)
	default:
	}
	runStrata(1)
	if out := strings.TrimSpace(e.crictl("exec", "-s", workID, "cat", "/l3")); out != "layer 3" {
		t.Fatalf("after the update, the workload read %q", out)
	}
	if snaps := e.snapshots("k8s.io"); len(snaps) == 0 {
		t.Fatal("after the update, containerd lists no strata snapshots for CRI")
	}
	if out := e.ctr("run", "--rm", "--snapshotter", "strata", "--net-host", imgThreeLayers, "ds-ctr-2", "cat", "/l2"); out != "layer 2\n" {
		t.Fatalf("after the update, ctr run printed %q", out)
	}
}
