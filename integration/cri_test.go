package integration

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKubernetesCRI drives containerd's CRI plugin, configured with strata as
// its snapshotter, the way the kubelet does, with crictl: pull, list, run a
// host-network pod and a container in it, read its logs, exec into it, stop
// and remove both. The container's root is an overlay whose lower
// directories are under strata's root. (share_files cannot serve CRI:
// containerd-config refuses the combination, see TestContainerdConfigShareFiles.)
func TestKubernetesCRI(t *testing.T) {
	e := newEnv(t, EnvOptions{CRI: true})
	e.crictl("pull", pauseImage)
	e.crictl("pull", imgThreeLayers)
	if images := e.crictl("images"); !strings.Contains(images, registry+"/three-layers") {
		t.Fatalf("crictl images does not list the pulled image:\n%s", images)
	}
	logDir := filepath.Join(e.Dir, "pods")
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	pod := e.writeJSON("pod.json", map[string]any{
		"metadata":      map[string]any{"name": "strata-pod", "namespace": "default", "uid": "strata-pod-uid", "attempt": 0},
		"log_directory": logDir,
		// network 2 is NODE: a host-network pod, needing no CNI.
		"linux": map[string]any{"security_context": map[string]any{"namespace_options": map[string]any{"network": 2}}},
	})
	ctr := e.writeJSON("container.json", map[string]any{
		"metadata": map[string]any{"name": "main"},
		"image":    map[string]any{"image": imgThreeLayers},
		"command":  []string{"/bin/sh", "-c", "cat /l3; sleep 3600"},
		"log_path": "main.log",
	})
	podID := strings.TrimSpace(e.crictl("runp", pod))
	cid := strings.TrimSpace(e.crictl("create", podID, ctr, pod))
	e.crictl("start", cid)

	// The container's root filesystem: an overlay on strata's layers.
	lower, _ := rootOverlay(t, cid)
	for _, l := range lower {
		if !strings.HasPrefix(l, e.StrataRoot+"/") {
			t.Errorf("lower directory %s is not under strata's root %s", l, e.StrataRoot)
		}
	}

	// Logs are written by the shim as the container runs: wait for the
	// line rather than for time.
	var logs string
	for i := 0; i < 100 && !strings.Contains(logs, "layer 3"); i++ {
		logs = e.crictl("logs", cid)
		if !strings.Contains(logs, "layer 3") {
			e.crictl("exec", "-s", cid, "true") // a round trip through the container
		}
	}
	if !strings.Contains(logs, "layer 3") {
		t.Fatalf("crictl logs: %q", logs)
	}
	if out := strings.TrimSpace(e.crictl("exec", "-s", cid, "cat", "/l2", "/lower-file")); out != "layer 2\nfrom layer 2" {
		t.Fatalf("crictl exec: %q", out)
	}
	e.crictl("stop", "--timeout", "0", cid)
	e.crictl("rm", cid)
	e.crictl("stopp", podID)
	e.crictl("rmp", podID)
	if ps := e.crictl("ps", "-a", "-q"); strings.TrimSpace(ps) != "" {
		t.Fatalf("containers left: %q", ps)
	}
}
