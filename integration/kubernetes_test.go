package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/moby/sys/mountinfo"

	"github.com/strata-snapshotter/strata/deploy/kubernetes"
)

// TestKubernetesNode installs strata on a real single-node cluster with
// kubectl apply -k, exactly as the README tells a user, first in the
// RuntimeClass mode and then switching the node to the default-snapshotter
// mode, and checks what a cluster operator sees: the DaemonSet becomes
// Ready, containerd is restarted once per configuration change and never by
// a rolling update, pods that were running keep running, pods on strata run
// from strata's root with logs, exec, metrics and the kubelet's stats
// working, deleting a pod removes its snapshots from strata, and in the
// default-snapshotter mode the kubelet accounts and evicts strata pods by
// their writable layers and its image garbage collection removes an image's
// layers from strata.
func TestKubernetesNode(t *testing.T) {
	c := newCluster(t)
	m, err := kubernetes.Load()
	if err != nil {
		t.Fatal(err)
	}

	// strata's image as make image builds it, under the name the manifests
	// use. There is no registry to pull it from again, so it is pinned
	// against the kubelet's (eager) image garbage collection.
	img := m.Kustomization.Images[0]
	image := "docker.io/library/" + img.NewName + ":" + img.NewTag
	archive := filepath.Join(c.dir, "strata.oci.tar")
	if out, err := c.e.combined("make", "-C", "..", "image", "GO_FROM_HOST=1", "IMAGE_OUTPUT=type=oci,dest="+archive+",name="+image); err != nil {
		t.Fatalf("make image: %v\n%s", err, out)
	}
	ctr := func(args ...string) string {
		return c.e.run(append([]string{filepath.Join(toolsBin, "ctr"), "--address", hostContainerdSock, "--namespace", "k8s.io"}, args...)...)
	}
	ctr("images", "import", archive)
	ctr("images", "label", image, "io.cri-containerd.pinned=pinned")

	// A pod that runs before strata arrives, on containerd's overlayfs.
	c.applyPod(podSpec{name: "bystander", image: imgThreeLayers, script: "exec sleep 3600"})
	bystander := c.waitRunning("bystander")

	// RuntimeClass mode: kubectl apply -k deploy/kubernetes.
	c.kubectl("apply", "-k", "../deploy/kubernetes")
	c.waitDaemonSet()
	// The init step restarted containerd exactly once (run 2), and the
	// kubelet's start of it was answered first.
	c.sup.waitStart(t, 2, time.Minute)
	c.noContainerdRestart("after the first install")
	c.noFailedEvents()
	c.stillRunning(bystander)
	strataPod := c.strataPod()
	c.notOnStrata(strataPod)

	// A pod on strata's RuntimeClass: its root is strata's.
	c.applyPod(podSpec{name: "on-strata", runtimeClass: m.RuntimeClass.Name, image: imgThreeLayers,
		script: "echo started on strata; busybox dd if=/dev/zero of=/written bs=1M count=8 2>/dev/null; exec sleep 3600"})
	onStrata := c.waitRunning("on-strata")
	lower, upper := rootOverlay(t, onStrata.containerID)
	c.underStrata("on-strata", lower, upper)
	if out := c.kubectl("logs", "on-strata"); out != "started on strata\n" {
		t.Errorf("kubectl logs printed %q", out)
	}
	if out := c.kubectl("exec", "on-strata", "--", "cat", "/l3"); out != "layer 3\n" {
		t.Errorf("kubectl exec printed %q", out)
	}
	// The kubelet's stats answer while a strata pod runs (containerd learns
	// strata's filesystem from the handler's runtime_platforms entry). In
	// this mode containerd collects no writable-layer usage for strata: the
	// README says so; the default-snapshotter mode below has it.
	eventually(t, time.Minute, func() (bool, string) {
		_, ok, why := c.podStats("on-strata")
		return ok, why
	})

	// The cluster's Prometheus reaches strata's metrics at its pod's
	// address (the node's), and health probes do not count as errors.
	metrics := c.kubectl("exec", "bystander", "--", "busybox", "wget", "-qO-", fmt.Sprintf("http://%s:9477/metrics", strataPod.podIP))
	if !strings.Contains(metrics, "strata_build_info{") {
		t.Errorf("strata's metrics from another pod:\n%s", metrics)
	}
	if strings.Contains(metrics, `strata_grpc_errors_total{code="NotFound",method="Stat"}`) {
		t.Errorf("health probes counted as errors:\n%s", metrics)
	}

	// Deleting the pod removes its snapshot from strata.
	c.kubectl("delete", "pod", "on-strata", "--wait")
	eventually(t, 2*time.Minute, func() (bool, string) {
		_, err := os.Stat(upper)
		return os.IsNotExist(err), fmt.Sprintf("the deleted pod's upper directory %s: %v", upper, err)
	})

	// A rolling update restarts neither containerd nor any pod.
	c.applyPod(podSpec{name: "steady", runtimeClass: m.RuntimeClass.Name, image: imgThreeLayers, script: "exec sleep 3600"})
	steady := c.waitRunning("steady")
	c.kubectl("-n", m.DaemonSet.Namespace, "rollout", "restart", "ds/"+m.DaemonSet.Name)
	c.waitDaemonSet()
	if c.strataPod().name == strataPod.name {
		t.Fatal("the rolling update did not replace strata's pod")
	}
	c.noContainerdRestart("by a rolling update")
	c.stillRunning(bystander)
	c.stillRunning(steady)
	if out := c.kubectl("exec", "steady", "--", "cat", "/l2"); out != "layer 2\n" {
		t.Errorf("after the update, kubectl exec printed %q", out)
	}
	c.userNamespacePod("userns-strata", m.RuntimeClass.Name, imgThreeLayers)

	// Default-snapshotter mode: the same node, switched with the variant.
	c.kubectl("apply", "-k", "../deploy/kubernetes/default-snapshotter")
	c.waitDaemonSet()
	c.sup.waitStart(t, 3, 2*time.Minute) // the config changed: one restart
	c.noContainerdRestart("after switching to the default-snapshotter mode")
	c.noFailedEvents()
	c.stillRunning(bystander)
	c.stillRunning(steady)
	// strata's own pod stays on overlayfs, so it starts, and pulls a new
	// image, while strata is down: an upgrade to an image from a registry,
	// as a user does it (kustomize's image edit), with every other pod's
	// snapshotter strata.
	c.notOnStrata(c.strataPod())
	upgrade := registry + "/strata-snapshotter"
	ctr("images", "tag", image, upgrade+":v2")
	ctr("images", "push", "--plain-http", upgrade+":v2")
	ctr("images", "rm", upgrade+":v2")
	overlay := filepath.Join(c.dir, "upgrade")
	if err := os.MkdirAll(overlay, 0o755); err != nil {
		t.Fatal(err)
	}
	// kustomize takes only a relative path to another kustomization.
	abs, err := filepath.Abs("../deploy/kubernetes/default-snapshotter")
	if err != nil {
		t.Fatal(err)
	}
	variant, err := filepath.Rel(overlay, abs)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(overlay, "kustomization.yaml"), []byte(fmt.Sprintf(`apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - %s
images:
  - name: strata-snapshotter
    newName: %s
    newTag: v2
`, variant, upgrade)), 0o644); err != nil {
		t.Fatal(err)
	}
	c.kubectl("apply", "-k", overlay)
	c.waitDaemonSet()
	upgraded := c.strataPod()
	c.notOnStrata(upgraded)
	if got := c.kubectl("-n", upgraded.namespace, "get", "pod", upgraded.name, "-o", "jsonpath={.spec.containers[0].image}"); got != upgrade+":v2" {
		t.Fatalf("after the upgrade strata's pod runs %s", got)
	}
	c.noContainerdRestart("by an upgrade in the default-snapshotter mode")
	c.stillRunning(bystander)
	c.stillRunning(steady)

	// A pod that names no RuntimeClass runs on strata, its image pulled
	// into strata, and the kubelet sees its writable layer.
	c.applyPod(podSpec{name: "on-default", image: imgSharedA,
		script: "busybox dd if=/dev/zero of=/written bs=1M count=8 2>/dev/null; exec sleep 3600"})
	onDefault := c.waitRunning("on-default")
	lower, upper = rootOverlay(t, onDefault.containerID)
	c.underStrata("on-default", lower, upper)
	eventually(t, 2*time.Minute, func() (bool, string) {
		used, ok, why := c.podStats("on-default")
		if !ok {
			return false, why
		}
		return used >= 8<<20, fmt.Sprintf("the kubelet reports %d bytes in on-default's writable layer, want at least 8 MiB", used)
	})
	c.userNamespacePod("userns-default", "", imgSharedA)
	// ... and evicts a pod whose writable layer passes its limit.
	c.applyPod(podSpec{name: "over-limit", image: imgSharedA, ephemeralLimit: "4Mi",
		script: "busybox dd if=/dev/zero of=/written bs=1M count=8 2>/dev/null; exec sleep 3600"})
	eventually(t, 3*time.Minute, func() (bool, string) {
		var p struct {
			Status struct{ Phase, Reason string }
		}
		c.get(&p, "pod", "over-limit")
		return p.Status.Phase == "Failed" && p.Status.Reason == "Evicted", "over-limit is " + p.Status.Phase + " " + p.Status.Reason
	})

	// The kubelet's image garbage collection removes the image, and with it
	// its layers from strata, once no pod has used it for imageMaximumGCAge;
	// it passes every 5 minutes from the kubelet's start, so this waits for
	// the next pass, or the one after if this one comes within the minute.
	// Only its own top layer goes: the layers below are three-layers's too,
	// which the steady pod runs from strata.
	c.kubectl("delete", "pod", "on-default", "over-limit", "--wait")
	eventually(t, 11*time.Minute, func() (bool, string) {
		_, err := os.Stat(lower[0])
		return os.IsNotExist(err), fmt.Sprintf("the unused image's layer %s: %v", lower[0], err)
	})
	for _, d := range lower[1:] {
		if _, err := os.Stat(d); err != nil {
			t.Errorf("a layer shared with an image in use went with the unused image: %v", err)
		}
	}
	c.stillRunning(bystander)
	c.stillRunning(steady)
	c.noContainerdRestart("by the end of the test")
}

// userNamespacePod runs a hostUsers: false pod on strata: it sees its
// image owned by its own root through idmapped mounts and can write, and
// strata makes no copy of the image for it (its committed snapshots are the
// same before and after).
func (c *cluster) userNamespacePod(name, runtimeClass, image string) {
	c.t.Helper()
	before := c.strataCommitted()
	c.applyPod(podSpec{name: name, runtimeClass: runtimeClass, image: image, ownUsers: true,
		script: "cat /proc/self/uid_map; ls -ln /l3; echo written > /new; cat /new; exec sleep 3600"})
	r := c.waitRunning(name)
	// containerd mounts strata's layer directory idmapped at a temporary
	// place and stacks the layers from there: the same layers, by name.
	lower, upper := rootOverlay(c.t, r.containerID)
	c.underStrata(name, nil, upper)
	for _, l := range lower {
		if _, err := os.Stat(filepath.Join(layersDir(hostStrataRoot), filepath.Base(l))); err != nil || !strings.Contains(l, "idmapped") {
			c.t.Errorf("pod %s's lower directory %s is not an idmapped view of a strata layer: %v", name, l, err)
		}
	}
	out := c.kubectl("logs", name)
	f := strings.Fields(out)
	if len(f) < 3 || f[0] != "0" || f[1] == "0" {
		c.t.Errorf("pod %s's uid_map is not a user namespace's:\n%s", name, out)
	}
	if !ownedByRoot(out, "/l3") || !strings.HasSuffix(out, "written\n") {
		c.t.Errorf("in pod %s the image's files are not owned by its root, or the write failed:\n%s", name, out)
	}
	if after := c.strataCommitted(); after != before {
		c.t.Errorf("a user-namespaced pod made strata hold %d committed snapshots, %d before: the image was copied", after, before)
	}
	c.kubectl("delete", "pod", name, "--wait")
}

// strataCommitted counts the committed snapshots containerd's CRI
// namespace has in strata.
func (c *cluster) strataCommitted() int {
	c.t.Helper()
	out := c.e.run(filepath.Join(toolsBin, "ctr"), "--address", hostContainerdSock, "--namespace", "k8s.io", "snapshots", "--snapshotter", "strata", "ls")
	n := 0
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[len(f)-1] == "Committed" {
			n++
		}
	}
	return n
}

// podSpec is a test pod in the default namespace.
type podSpec struct {
	name, runtimeClass, image, script string
	ephemeralLimit                    string
	ownUsers                          bool // hostUsers: false
}

func (c *cluster) applyPod(p podSpec) {
	c.t.Helper()
	var extra, limits string
	if p.runtimeClass != "" {
		extra = "\n  runtimeClassName: " + p.runtimeClass
	}
	if p.ownUsers {
		extra += "\n  hostUsers: false"
	}
	if p.ephemeralLimit != "" {
		limits = fmt.Sprintf("\n    resources:\n      limits:\n        ephemeral-storage: %s", p.ephemeralLimit)
	}
	file := filepath.Join(c.dir, p.name+".yaml")
	yaml := fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %s
  namespace: default
spec:
  terminationGracePeriodSeconds: 1
  automountServiceAccountToken: false%s
  containers:
  - name: main
    image: %s
    command: ["/bin/sh", "-c", %q]%s
`, p.name, extra, p.image, p.script, limits)
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		c.t.Fatal(err)
	}
	c.kubectl("apply", "-f", file)
}

// runningPod is what the test remembers of a running pod, to tell later
// that it kept running: the same container, never restarted.
type runningPod struct {
	namespace, name, containerID, podIP string
}

type podJSON struct {
	Metadata struct{ Name, Namespace string }
	Status   struct {
		Phase             string
		PodIP             string `json:"podIP"`
		ContainerStatuses []struct {
			Name         string
			ContainerID  string `json:"containerID"`
			RestartCount int    `json:"restartCount"`
			Ready        bool
			State        struct {
				Running *struct{} `json:"running"`
			}
		} `json:"containerStatuses"`
	}
}

// waitRunning waits until the default namespace's pod name runs.
func (c *cluster) waitRunning(name string) runningPod {
	c.t.Helper()
	c.kubectl("wait", "--for=condition=Ready", "pod/"+name, "--timeout=3m")
	var p podJSON
	c.get(&p, "pod", name)
	return c.remember(p)
}

func (c *cluster) remember(p podJSON) runningPod {
	c.t.Helper()
	if len(p.Status.ContainerStatuses) == 0 {
		c.t.Fatalf("pod %s has no container status", p.Metadata.Name)
	}
	id := p.Status.ContainerStatuses[len(p.Status.ContainerStatuses)-1].ContainerID
	return runningPod{p.Metadata.Namespace, p.Metadata.Name, strings.TrimPrefix(id, "containerd://"), p.Status.PodIP}
}

// stillRunning fails unless the pod runs the same containers, never
// restarted.
func (c *cluster) stillRunning(r runningPod) {
	c.t.Helper()
	var p podJSON
	c.get(&p, "-n", r.namespace, "pod", r.name)
	for _, s := range p.Status.ContainerStatuses {
		if s.RestartCount != 0 || s.State.Running == nil || strings.TrimPrefix(s.ContainerID, "containerd://") != r.containerID {
			c.t.Errorf("pod %s did not keep running: container %s restarts %d, running %v (was %s)",
				r.name, s.ContainerID, s.RestartCount, s.State.Running != nil, r.containerID)
		}
	}
}

// waitDaemonSet waits until strata's DaemonSet has rolled out and is Ready.
func (c *cluster) waitDaemonSet() {
	c.t.Helper()
	c.kubectl("-n", "strata-system", "rollout", "status", "ds/strata-snapshotter", "--timeout=5m")
	var ds struct {
		Status struct {
			NumberReady            int `json:"numberReady"`
			DesiredNumberScheduled int `json:"desiredNumberScheduled"`
		}
	}
	c.get(&ds, "-n", "strata-system", "ds/strata-snapshotter")
	if ds.Status.NumberReady != 1 || ds.Status.DesiredNumberScheduled != 1 {
		c.t.Fatalf("DaemonSet: %d of %d ready", ds.Status.NumberReady, ds.Status.DesiredNumberScheduled)
	}
}

// strataPod returns strata's running pod.
func (c *cluster) strataPod() runningPod {
	c.t.Helper()
	var list struct{ Items []podJSON }
	c.get(&list, "-n", "strata-system", "pods", "-l", "app.kubernetes.io/name=strata-snapshotter", "--field-selector=status.phase=Running")
	if len(list.Items) != 1 {
		c.t.Fatalf("%d strata pods running, want 1", len(list.Items))
	}
	return c.remember(list.Items[0])
}

// noContainerdRestart fails if containerd booted again since the last
// expected start.
func (c *cluster) noContainerdRestart(when string) {
	c.t.Helper()
	select {
	case n, ok := <-c.sup.started:
		if !ok {
			c.t.Fatalf("containerd did not come back %s", when)
		}
		c.t.Fatalf("containerd was restarted (run %d) %s", n, when)
	default:
	}
}

// notOnStrata fails if a pod's root is on strata: strata's own pod must
// never need strata.
func (c *cluster) notOnStrata(r runningPod) {
	c.t.Helper()
	lower, upper := rootOverlay(c.t, r.containerID)
	for _, d := range append(lower, upper) {
		if strings.HasPrefix(d, hostStrataRoot+"/") {
			c.t.Errorf("strata's own pod %s runs from strata's root: %s", r.name, d)
		}
	}
}

// noFailedEvents fails on a Failed event for strata's pods: a container
// start the kubelet saw fail (containerd restarted before it answered).
func (c *cluster) noFailedEvents() {
	c.t.Helper()
	var events struct {
		Items []struct {
			Type, Reason, Message string
			InvolvedObject        struct{ Name string } `json:"involvedObject"`
		}
	}
	c.get(&events, "-n", "strata-system", "events")
	for _, e := range events.Items {
		if e.Type == "Warning" && e.Reason == "Failed" {
			c.t.Errorf("event on %s: %s %s: %s", e.InvolvedObject.Name, e.Type, e.Reason, e.Message)
		}
	}
	// Events are best effort; the kubelet's restart counts are not.
	var pods struct {
		Items []struct {
			Metadata struct{ Name string }
			Status   struct {
				InitContainerStatuses []struct {
					Name         string
					RestartCount int `json:"restartCount"`
				} `json:"initContainerStatuses"`
			}
		}
	}
	c.get(&pods, "-n", "strata-system", "pods")
	for _, p := range pods.Items {
		for _, s := range p.Status.InitContainerStatuses {
			if s.RestartCount != 0 {
				c.t.Errorf("pod %s: init container %s restarted %d times", p.Metadata.Name, s.Name, s.RestartCount)
			}
		}
	}
}

// underStrata fails unless a pod's root has its lower and upper directories
// under strata's root.
func (c *cluster) underStrata(pod string, lower []string, upper string) {
	c.t.Helper()
	for _, d := range append(lower, upper) {
		if !strings.HasPrefix(d, hostStrataRoot+"/") {
			c.t.Errorf("pod %s's root directory %s is not under strata's root %s", pod, d, hostStrataRoot)
		}
	}
}

// podStats asks the kubelet's /stats/summary, which must answer 200, and
// returns the bytes used by the pod's container's writable layer; ok is
// false, with the reason, until the summary lists that container's root
// filesystem.
func (c *cluster) podStats(pod string) (used uint64, ok bool, why string) {
	c.t.Helper()
	code, body := c.kubeletGet("/stats/summary")
	if code != 200 {
		c.t.Fatalf("/stats/summary: %d %s", code, body)
	}
	var s struct {
		Pods []struct {
			PodRef     struct{ Name string } `json:"podRef"`
			Containers []struct {
				Rootfs *struct {
					UsedBytes *uint64 `json:"usedBytes"`
				} `json:"rootfs"`
			}
		}
	}
	if err := json.Unmarshal(body, &s); err != nil {
		c.t.Fatalf("/stats/summary: %v", err)
	}
	for _, p := range s.Pods {
		if p.PodRef.Name == pod && len(p.Containers) == 1 && p.Containers[0].Rootfs != nil {
			if u := p.Containers[0].Rootfs.UsedBytes; u != nil {
				return *u, true, ""
			}
			return 0, true, ""
		}
	}
	return 0, false, "/stats/summary lists no root filesystem for pod " + pod
}

// rootOverlay returns the lower directories (top first) and the upper
// directory of the overlay mount that is container cid's root.
func rootOverlay(t *testing.T, cid string) (lower []string, upper string) {
	t.Helper()
	mounts, err := mountinfo.GetMounts(func(i *mountinfo.Info) (skip, stop bool) {
		return !(i.FSType == "overlay" && strings.Contains(i.Mountpoint, cid)), false
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(mounts) != 1 {
		t.Fatalf("want one overlay mount for container %s, found %d", cid, len(mounts))
	}
	for _, o := range strings.Split(mounts[0].VFSOptions, ",") {
		if v, ok := strings.CutPrefix(o, "lowerdir="); ok {
			// Layers, then after "::" strata's object store
			// (share_files), a data-only layer.
			lower = slices.DeleteFunc(strings.Split(v, ":"), func(s string) bool { return s == "" })
		}
		if v, ok := strings.CutPrefix(o, "upperdir="); ok {
			upper = v
		}
	}
	if len(lower) == 0 || upper == "" {
		t.Fatalf("container %s's root mount: %s", cid, mounts[0].VFSOptions)
	}
	return lower, upper
}
