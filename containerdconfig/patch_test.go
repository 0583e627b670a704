package containerdconfig

import (
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/pelletier/go-toml/v2"
)

var opts = Options{Address: "/run/strata/strata.sock", Root: "/var/lib/strata", CRI: true, RemapIDs: true}

func decode(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var doc map[string]any
	if err := toml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("patched config is not valid TOML: %v\n%s", err, b)
	}
	return doc
}

// checkRegistered asserts everything strata needs is in doc.
func checkRegistered(t *testing.T, doc map[string]any, criPath ...string) {
	t.Helper()
	if dig(doc, "proxy_plugins", "strata", "type") != "snapshot" ||
		dig(doc, "proxy_plugins", "strata", "address") != opts.Address ||
		dig(doc, "proxy_plugins", "strata", "exports", "root") != opts.Root {
		t.Errorf("proxy_plugins.strata: %v", dig(doc, "proxy_plugins", "strata"))
	}
	caps, _ := dig(doc, "proxy_plugins", "strata", "capabilities").([]any)
	if len(caps) != 2 || caps[0] != "rebase" || caps[1] != "remap-ids" {
		t.Errorf("capabilities %v", caps)
	}
	n := 0
	list, _ := dig(doc, "plugins", transferPlugin, "unpack_config").([]any)
	for _, e := range list {
		if m := e.(map[string]any); m["snapshotter"] == "strata" && m["differ"] == "walking" && strings.HasPrefix(m["platform"].(string), "linux/") {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d unpack_config entries for strata, want 1: %v", n, list)
	}
	if criPath != nil && dig(doc, criPath...) != "strata" {
		t.Errorf("CRI snapshotter: %v", dig(doc, criPath...))
	}
}

func patchFile(t *testing.T, name string, o Options) (in, out []byte, changed bool) {
	t.Helper()
	in, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	out, changed, err = Patch(in, o)
	if err != nil {
		t.Fatal(err)
	}
	// A second patch changes nothing.
	again, changedAgain, err := Patch(out, o)
	if err != nil || changedAgain || string(again) != string(out) {
		t.Fatalf("patching twice changed the file again (%v):\n%s", err, again)
	}
	return in, out, changed
}

// keptLines asserts every line of in is in out, except those dropped.
func keptLines(t *testing.T, in, out []byte, dropped ...string) {
	t.Helper()
	for _, l := range strings.Split(string(in), "\n") {
		skip := false
		for _, d := range dropped {
			skip = skip || strings.Contains(l, d)
		}
		if !skip && !strings.Contains(string(out), l) {
			t.Errorf("line lost: %q", l)
		}
	}
}

func TestContainerdDefaultConfig(t *testing.T) {
	in, out, changed := patchFile(t, "default-v4.toml", opts)
	if !changed {
		t.Fatal("reported unchanged")
	}
	doc := decode(t, out)
	checkRegistered(t, doc, "plugins", criImagesV3, "snapshotter")
	keptLines(t, in, out, "snapshotter = 'overlayfs'")
	// The file had no unpack_config, so containerd used its built-in entry
	// for overlayfs; a list with only strata's would drop it.
	list := dig(doc, "plugins", transferPlugin, "unpack_config").([]any)
	if len(list) != 2 || list[0].(map[string]any)["snapshotter"] != "overlayfs" || list[0].(map[string]any)["differ"] != "walking" {
		t.Errorf("unpack_config %v: containerd's default overlayfs entry is not kept", list)
	}
}

func TestVersion2KeepsComments(t *testing.T) {
	in, out, _ := patchFile(t, "v2-commented.toml", opts)
	checkRegistered(t, decode(t, out), "plugins", criV2, "containerd", "snapshotter")
	keptLines(t, in, out, `snapshotter = "overlayfs"`)
	if !strings.Contains(string(out), "      snapshotter = \"strata\"\n") {
		t.Errorf("snapshotter not replaced in place:\n%s", out)
	}
}

func TestStaleRegistrationReplaced(t *testing.T) {
	in, out, _ := patchFile(t, "v3-stale.toml", Options{Address: opts.Address, Root: opts.Root, RemapIDs: true})
	doc := decode(t, out)
	checkRegistered(t, doc)
	if strings.Count(string(out), "[proxy_plugins.strata]") != 1 || strings.Contains(string(out), "/run/old") {
		t.Errorf("old registration not replaced:\n%s", out)
	}
	keptLines(t, in, out, "/run/old", `type = "snapshot"`, "[proxy_plugins.strata]")
	if dig(doc, "proxy_plugins", "other", "address") != "/run/other.sock" {
		t.Error("another proxy plugin was touched")
	}
	// Without CRI, the CRI plugin is left alone.
	if dig(doc, "plugins", criImagesV3) != nil {
		t.Error("CRI configured though not asked")
	}
}

func TestAlreadyPatchedUnchanged(t *testing.T) {
	_, out, _ := patchFile(t, "default-v4.toml", opts)
	if _, changed, _ := Patch(out, opts); changed {
		t.Fatal("a patched config reported as changed")
	}
}

func TestUnsupportedVersions(t *testing.T) {
	for _, in := range []string{"root = '/x'\n", "version = 1\n", "version = 5\n", "version = 3\n[broken"} {
		if _, _, err := Patch([]byte(in), opts); err == nil {
			t.Errorf("%q: patched without error", in)
		}
	}
}

// TestRuntimeHandler: the handler is containerd's default runtime with strata
// as its snapshotter; the CRI plugin's default snapshotter stays as it was.
func TestRuntimeHandler(t *testing.T) {
	o := Options{Address: opts.Address, Root: opts.Root, RemapIDs: true, RuntimeHandler: "strata"}
	in, out, changed := patchFile(t, "default-v4.toml", o)
	if !changed {
		t.Fatal("reported unchanged")
	}
	keptLines(t, in, out)
	doc := decode(t, out)
	checkRegistered(t, doc)
	base := []string{"plugins", criRuntimeV3, "containerd", "runtimes"}
	runc := dig(doc, append(base, "runc")...).(map[string]any)
	got, ok := dig(doc, append(base, "strata")...).(map[string]any)
	if !ok {
		t.Fatalf("no strata runtime handler:\n%s", out)
	}
	if got["snapshotter"] != "strata" || got["runtime_type"] != "io.containerd.runc.v2" || got["sandboxer"] != runc["sandboxer"] {
		t.Errorf("handler %v", got)
	}
	if !reflect.DeepEqual(got["options"], runc["options"]) {
		t.Errorf("handler options %v, runc's %v", got["options"], runc["options"])
	}
	if dig(doc, "plugins", criImagesV3, "snapshotter") != "overlayfs" {
		t.Errorf("CRI default snapshotter changed to %v", dig(doc, "plugins", criImagesV3, "snapshotter"))
	}

	// The node switches runc to the systemd cgroup driver: the handler follows.
	systemd := strings.Replace(string(out), "SystemdCgroup = false", "SystemdCgroup = true", 1)
	again, changed, err := Patch([]byte(systemd), o)
	if err != nil || !changed {
		t.Fatalf("changed=%v err=%v", changed, err)
	}
	doc = decode(t, again)
	if dig(doc, append(base, "strata", "options", "SystemdCgroup")...) != true {
		t.Errorf("handler did not follow runc's options:\n%s", again)
	}
	if strings.Count(string(again), "runtimes.strata]") != 1 {
		t.Errorf("handler table written twice:\n%s", again)
	}
}

func TestRuntimeHandlerVersion2(t *testing.T) {
	o := Options{Address: opts.Address, Root: opts.Root, RemapIDs: true, RuntimeHandler: "strata"}
	in, out, _ := patchFile(t, "v2-commented.toml", o)
	keptLines(t, in, out)
	doc := decode(t, out)
	if dig(doc, "plugins", criV2, "containerd", "runtimes", "strata", "snapshotter") != "strata" {
		t.Errorf("no v2 handler:\n%s", out)
	}
}

func TestRuntimeHandlerBadNames(t *testing.T) {
	for _, name := range []string{"a.b", "a b", `a"b`, "x]"} {
		o := Options{Address: opts.Address, Root: opts.Root, RemapIDs: true, RuntimeHandler: name}
		if _, _, err := Patch([]byte("version = 3\n"), o); err == nil {
			t.Errorf("%q accepted", name)
		}
	}
}

// The common hand-written snippet sets only runc's options: a copy of it
// must still name the runtime, and the handler must reach CRI's image
// service, where containerd learns strata's filesystem for the kubelet.
func TestRuntimeHandlerPartialRunc(t *testing.T) {
	in := []byte(`version = 3
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
  SystemdCgroup = true
`)
	o := Options{Address: opts.Address, Root: opts.Root, RemapIDs: true, RuntimeHandler: "strata"}
	out, _, err := Patch(in, o)
	if err != nil {
		t.Fatal(err)
	}
	doc := decode(t, out)
	h := []string{"plugins", criRuntimeV3, "containerd", "runtimes", "strata"}
	if dig(doc, append(h, "runtime_type")...) != "io.containerd.runc.v2" || dig(doc, append(h, "options", "SystemdCgroup")...) != true {
		t.Errorf("handler %v", dig(doc, h...))
	}
	if dig(doc, "plugins", criImagesV3, "runtime_platforms", "strata", "snapshotter") != "strata" {
		t.Errorf("no runtime_platforms entry:\n%s", out)
	}
	if again, changed, err := Patch(out, o); err != nil || changed {
		t.Errorf("second patch changed=%v err=%v:\n%s", changed, err, again)
	}
}

// Default-snapshotter mode: strata is CRI's snapshotter and its handler the
// default runtime; runc, which strata's own pod names, keeps overlayfs for
// its containers and its pulls.
func TestBootstrapHandler(t *testing.T) {
	o := Options{Address: opts.Address, Root: opts.Root, RemapIDs: true, CRI: true, RuntimeHandler: "strata", BootstrapHandler: "runc"}
	in, out, changed := patchFile(t, "default-v4.toml", o)
	if !changed {
		t.Fatal("reported unchanged")
	}
	keptLines(t, in, out, "snapshotter", "default_runtime_name")
	doc := decode(t, out)
	checkRegistered(t, doc, "plugins", criImagesV3, "snapshotter")
	base := []string{"plugins", criRuntimeV3, "containerd"}
	if dig(doc, append(base, "default_runtime_name")...) != "strata" {
		t.Errorf("default runtime %v", dig(doc, append(base, "default_runtime_name")...))
	}
	for name, want := range map[string]string{"strata": "strata", "runc": "overlayfs"} {
		if got := dig(doc, append(base, "runtimes", name, "snapshotter")...); got != want {
			t.Errorf("runtime %s snapshotter %v, want %s", name, got, want)
		}
		if got := dig(doc, "plugins", criImagesV3, "runtime_platforms", name, "snapshotter"); got != want {
			t.Errorf("runtime_platforms.%s snapshotter %v, want %s", name, got, want)
		}
		if dig(doc, append(base, "runtimes", name, "runtime_type")...) != "io.containerd.runc.v2" {
			t.Errorf("runtime %s: %v", name, dig(doc, append(base, "runtimes", name)...))
		}
	}
	for _, bad := range []Options{
		{Address: opts.Address, Root: opts.Root, RuntimeHandler: "strata", BootstrapHandler: "runc"},
		{Address: opts.Address, Root: opts.Root, CRI: true, BootstrapHandler: "runc"},
		{Address: opts.Address, Root: opts.Root, CRI: true, RuntimeHandler: "runc", BootstrapHandler: "runc"},
	} {
		if _, _, err := Patch(in, bad); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// A file that sets what strata edits in a form the text edits do not reach
// (an inline table here) is refused, not left invalid or unchanged.
func TestUneditableFormRefused(t *testing.T) {
	in := []byte(`version = 3
[plugins."io.containerd.cri.v1.runtime".containerd]
  runtimes = { runc = { runtime_type = "io.containerd.runc.v2" } }
`)
	o := Options{Address: opts.Address, Root: opts.Root, RemapIDs: true, CRI: true, RuntimeHandler: "strata", BootstrapHandler: "runc"}
	if out, _, err := Patch(in, o); err == nil || !strings.Contains(err.Error(), "by hand") {
		t.Fatalf("err %v; patched:\n%s", err, out)
	}
}

// The default-snapshotter mode on the common partial runc snippet (runc's
// options table the last in the file): runc gains its name and snapshotter
// beside its options, which stay as written, comments included.
func TestBootstrapHandlerPartialRunc(t *testing.T) {
	for _, in := range []string{`version = 3

[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
  # the node's cgroup driver
  SystemdCgroup = true
`, `version = 2

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  # the node's cgroup driver
  SystemdCgroup = true
`} {
		o := Options{Address: opts.Address, Root: opts.Root, RemapIDs: true, CRI: true, RuntimeHandler: "strata", BootstrapHandler: "runc"}
		out, changed, err := Patch([]byte(in), o)
		if err != nil || !changed {
			t.Fatalf("changed=%v err=%v", changed, err)
		}
		keptLines(t, []byte(in), out)
		doc := decode(t, out)
		base := []string{"plugins", criRuntimeV3, "containerd"}
		if strings.HasPrefix(in, "version = 2") {
			base = []string{"plugins", criV2, "containerd"}
		}
		runc := append(slices.Clone(base), "runtimes", "runc")
		if dig(doc, append(runc, "runtime_type")...) != "io.containerd.runc.v2" || dig(doc, append(runc, "snapshotter")...) != "overlayfs" ||
			dig(doc, append(runc, "options", "SystemdCgroup")...) != true {
			t.Errorf("runc %v", dig(doc, runc...))
		}
		if dig(doc, append(base, "runtimes", "strata", "options", "SystemdCgroup")...) != true {
			t.Errorf("strata's handler did not copy runc's options:\n%s", out)
		}
		if again, changed, err := Patch(out, o); err != nil || changed {
			t.Errorf("second patch changed=%v err=%v:\n%s", changed, err, again)
		}
	}
}
