package kubernetes

import (
	"io/fs"
	"net"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	nodev1 "k8s.io/api/node/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
)

func TestManifestsDecodeStrictly(t *testing.T) {
	m, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	if m.DaemonSet.Name == "" || m.RuntimeClass.Handler == "" || m.Namespace.Name == "" || m.ServiceAccount.Name == "" {
		t.Fatalf("decoded objects are empty: %+v", m)
	}
}

// copyWith is the manifests with one file replaced.
func copyWith(t *testing.T, name, body string) fs.FS {
	t.Helper()
	out := fstest.MapFS{}
	entries, err := fs.Glob(files, "*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, _ := fs.ReadFile(files, e)
		out[e] = &fstest.MapFile{Data: b}
	}
	out[name] = &fstest.MapFile{Data: []byte(body)}
	return out
}

func read(t *testing.T, name string) string {
	t.Helper()
	b, err := fs.ReadFile(files, name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// Mistakes the API server would drop or misread are load errors here.
func TestManifestMistakesRefused(t *testing.T) {
	ds := read(t, "daemonset.yaml")
	for _, c := range []struct{ what, file, body, want string }{
		{"misspelt field", "daemonset.yaml", strings.Replace(ds, "hostPID: true", "hostPid: true", 1), "unknown field"},
		{"field at the wrong level", "daemonset.yaml", strings.Replace(ds, "      hostPID: true", "      hostPID: true\n      mountPropagation: HostToContainer", 1), "unknown field"},
		{"duplicate key", "daemonset.yaml", strings.Replace(ds, "hostPID: true", "hostPID: true\n      hostPID: false", 1), "already set"},
		{"wrong type", "daemonset.yaml", strings.Replace(ds, "maxUnavailable: 1", "maxUnavailable: [1]", 1), "unmarshal"},
		{"unknown kustomization key", "kustomization.yaml", read(t, "kustomization.yaml") + "commonLabelz: {a: b}\n", "unknown field"},
		{"unlisted file", "extra.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "not listed"},
		{"missing object", "kustomization.yaml", strings.Replace(read(t, "kustomization.yaml"), "  - runtimeclass.yaml\n", "", 1), "RuntimeClass"},
	} {
		_, err := load(copyWith(t, c.file, c.body))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: err = %v, want one saying %q", c.what, err, c.want)
		}
	}
}

// arg returns the value of --name=value in args, or "" when absent.
func arg(args []string, name string) string {
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

// TestManifestsHangTogether checks what the API server cannot: that the
// objects refer to each other correctly, and that the init step registers
// strata at the paths the daemon serves.
func TestManifestsHangTogether(t *testing.T) {
	m, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	ns := m.Kustomization.Namespace
	if m.Namespace.Name != ns || m.ServiceAccount.Namespace != ns || m.DaemonSet.Namespace != ns {
		t.Errorf("namespaces: kustomization %q, Namespace %q, ServiceAccount %q, DaemonSet %q", ns, m.Namespace.Name, m.ServiceAccount.Namespace, m.DaemonSet.Namespace)
	}
	if m.Namespace.Labels["pod-security.kubernetes.io/enforce"] != "privileged" {
		t.Error("the namespace does not admit privileged pods")
	}
	ds := m.DaemonSet
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("selector %v does not match the template's labels %v", ds.Spec.Selector, ds.Spec.Template.Labels)
	}
	spec := ds.Spec.Template.Spec
	if spec.ServiceAccountName != m.ServiceAccount.Name {
		t.Errorf("service account %q, manifest has %q", spec.ServiceAccountName, m.ServiceAccount.Name)
	}
	if !spec.HostPID {
		t.Error("the init step cannot find the host's containerd without hostPID")
	}
	if ds.Spec.UpdateStrategy.Type != "RollingUpdate" {
		t.Errorf("update strategy %q", ds.Spec.UpdateStrategy.Type)
	}

	images := map[string]bool{}
	for _, img := range m.Kustomization.Images {
		images[img.Name] = true
	}
	for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
		if !images[c.Image] {
			t.Errorf("container %s: image %q is not one kustomization.yaml sets", c.Name, c.Image)
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
			t.Errorf("container %s has no resource requests", c.Name)
		}
		for _, vm := range c.VolumeMounts {
			v, err := m.Volume(vm.Name)
			if err != nil {
				t.Errorf("container %s: %v", c.Name, err)
				continue
			}
			// containerd, on the host, resolves the paths strata returns.
			if v.HostPath == nil || v.HostPath.Path != vm.MountPath {
				t.Errorf("container %s mounts %s at %s, not at its host path", c.Name, vm.Name, vm.MountPath)
			}
		}
	}

	daemon, err := m.Container("strata")
	if err != nil {
		t.Fatal(err)
	}
	setup, err := m.Container("containerd-config")
	if err != nil {
		t.Fatal(err)
	}
	if len(setup.Args) == 0 || setup.Args[0] != "containerd-config" || !slices.Contains(setup.Args, "--restart") {
		t.Errorf("init step args %v", setup.Args)
	}
	for _, flag := range []string{"address", "root"} {
		if got, want := arg(setup.Args, flag), arg(daemon.Args, flag); got == "" || got != want {
			t.Errorf("containerd is told --%s=%q, the daemon uses %q", flag, got, want)
		}
	}
	if h := arg(setup.Args, "runtime-handler"); h != m.RuntimeClass.Handler {
		t.Errorf("init step adds handler %q, RuntimeClass names %q", h, m.RuntimeClass.Handler)
	}
	// Every path the daemon uses is on a host volume it mounts.
	for _, flag := range []string{"root", "address"} {
		if p := arg(daemon.Args, flag); !underMount(daemon, p) {
			t.Errorf("--%s=%s is not on a host volume", flag, p)
		}
	}
	for _, flag := range []string{"file", "containerd-address"} {
		if p := arg(setup.Args, flag); !underMount(setup, p) {
			t.Errorf("init step --%s=%s is not on a host volume", flag, p)
		}
	}
	// Metrics listen on the pod's network at the port the pod declares,
	// and the probes ask /healthz there.
	_, port, err := net.SplitHostPort(arg(daemon.Args, "metrics-address"))
	if err != nil {
		t.Fatalf("--metrics-address: %v", err)
	}
	var declared string
	for _, p := range daemon.Ports {
		if p.Name == "metrics" {
			declared = strconv.Itoa(int(p.ContainerPort))
		}
	}
	if declared != port || m.DaemonSet.Spec.Template.Annotations["prometheus.io/port"] != port {
		t.Errorf("metrics listen on port %s; the pod declares %q, its scrape annotation %q", port, declared, m.DaemonSet.Spec.Template.Annotations["prometheus.io/port"])
	}
	for name, p := range map[string]*corev1.Probe{"startup": daemon.StartupProbe, "readiness": daemon.ReadinessProbe, "liveness": daemon.LivenessProbe} {
		if p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz" || p.HTTPGet.Port.String() != "metrics" {
			t.Errorf("%s probe %+v, want GET /healthz on the metrics port", name, p)
		}
	}
}

func underMount(c *corev1.Container, path string) bool {
	for _, vm := range c.VolumeMounts {
		if path != "" && (path == vm.MountPath || strings.HasPrefix(path, vm.MountPath+"/")) {
			return true
		}
	}
	return false
}

// The default-snapshotter variant's patch repeats the init step's arguments
// (a strategic merge replaces a list): it must say what the base says plus
// the mode's two flags, and name the same bootstrap handler as its
// RuntimeClass and its pull annotation.
func TestDefaultSnapshotterVariant(t *testing.T) {
	m, err := Load()
	if err != nil {
		t.Fatal(err)
	}
	base, err := m.Container("containerd-config")
	if err != nil {
		t.Fatal(err)
	}
	var patch appsv1.DaemonSet
	if err := decodeFile(embedded, "default-snapshotter/daemonset-patch.yaml", &patch); err != nil {
		t.Fatal(err)
	}
	var rc nodev1.RuntimeClass
	if err := decodeFile(embedded, "default-snapshotter/runtimeclass-bootstrap.yaml", &rc); err != nil {
		t.Fatal(err)
	}
	spec := patch.Spec.Template.Spec
	if len(spec.InitContainers) != 1 || spec.InitContainers[0].Name != base.Name {
		t.Fatalf("the patch's init containers: %+v", spec.InitContainers)
	}
	got := spec.InitContainers[0].Args
	handler := arg(got, "bootstrap-handler")
	want := append(slices.Clone(base.Args), "--cri", "--bootstrap-handler="+handler)
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("the variant's init args %v, want the base's plus --cri and --bootstrap-handler: %v", got, want)
	}
	if handler == "" || rc.Handler != handler || spec.RuntimeClassName == nil || *spec.RuntimeClassName != rc.Name {
		t.Errorf("bootstrap handler %q, RuntimeClass %s with handler %q, pod's RuntimeClass %v", handler, rc.Name, rc.Handler, spec.RuntimeClassName)
	}
	if a := patch.Spec.Template.Annotations["io.containerd.cri.runtime-handler"]; a != handler {
		t.Errorf("pull annotation names %q, the bootstrap handler is %q", a, handler)
	}
}
