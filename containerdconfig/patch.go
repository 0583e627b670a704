// Package containerdconfig registers strata in a containerd config file. It
// edits the file's text rather than re-encoding it, so every other key and
// every comment stays as the operator wrote it, and it changes nothing when
// the file already says what it should.
package containerdconfig

import (
	"fmt"
	"maps"
	"reflect"
	"runtime"
	"slices"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// Options say how strata is registered.
type Options struct {
	// Address is strata's Snapshots socket.
	Address string
	// Root is strata's root, exported so the kubelet can account the image
	// filesystem's usage.
	Root string
	// CRI makes strata the snapshotter of containerd's CRI plugin: image
	// pulls, and every pod without a runtime handler of its own (Kubernetes'
	// default-snapshotter mode). containerd then collects the writable
	// layers' usage and the image filesystem's from strata.
	CRI bool
	// RuntimeHandler, when set, adds a CRI runtime handler of that name: a
	// copy of the default runtime (runc) whose snapshotter is strata, known
	// to CRI's image service too, so the kubelet's stats find strata's
	// filesystem. Pods opt in with a RuntimeClass naming the handler. With
	// CRI and BootstrapHandler it becomes the default runtime.
	RuntimeHandler string
	// RemapIDs advertises the remap-ids capability: strata serves
	// user-namespaced containers with idmapped mounts, which the kernel must
	// support; without it containerd copies the image, chowned, for each
	// distinct mapping.
	RemapIDs bool
	// BootstrapHandler, with CRI, names the runtime handler that keeps
	// containerd's overlayfs (runc, which every containerd has, so strata's
	// own pod can name it before strata was ever installed): strata's pod
	// runs and pulls its image with it, so strata never waits on itself.
	// The default runtime becomes RuntimeHandler.
	BootstrapHandler string
}

// builtinSnapshotter is containerd's own default snapshotter, which the
// bootstrap handler keeps.
const builtinSnapshotter = "overlayfs"

const (
	transferPlugin = "io.containerd.transfer.v1.local"
	criImagesV3    = "io.containerd.cri.v1.images"  // config versions 3 and 4
	criRuntimeV3   = "io.containerd.cri.v1.runtime" // config versions 3 and 4
	criV2          = "io.containerd.grpc.v1.cri"    // config version 2
)

// Patch returns the config with strata registered, and whether anything
// changed (containerd then needs a restart to see it).
func Patch(in []byte, o Options) ([]byte, bool, error) {
	var doc map[string]any
	if err := toml.Unmarshal(in, &doc); err != nil {
		return nil, false, fmt.Errorf("parse containerd config: %w", err)
	}
	version, _ := doc["version"].(int64)
	if version < 2 || version > 4 {
		return nil, false, fmt.Errorf("containerd config version %d: only versions 2, 3 and 4 are supported", version)
	}
	t := text{lines: strings.Split(string(in), "\n")}

	// [proxy_plugins.strata], rewritten whole when it differs.
	caps, capsText := []any{"rebase"}, `["rebase"]`
	if o.RemapIDs {
		caps, capsText = []any{"rebase", "remap-ids"}, `["rebase", "remap-ids"]`
	}
	want := map[string]any{
		"type":         "snapshot",
		"address":      o.Address,
		"capabilities": caps,
		"exports":      map[string]any{"root": o.Root},
	}
	if !reflect.DeepEqual(dig(doc, "proxy_plugins", "strata"), want) {
		t.removeTables([]string{"proxy_plugins", "strata"})
		t.appendBlock(fmt.Sprintf(`[proxy_plugins.strata]
  type = "snapshot"
  address = %q
  # rebase: containerd unpacks layers in parallel. remap-ids: user-namespaced
  # containers get idmapped mounts instead of a chowned copy of the image.
  capabilities = %s
  [proxy_plugins.strata.exports]
    # The kubelet accounts the image filesystem's usage here.
    root = %q`, o.Address, capsText, o.Root))
	}

	// An unpack platform for strata in the transfer service, without which
	// pulls through it fail with "no unpack platforms defined".
	platform := runtime.GOOS + "/" + runtime.GOARCH
	found := false
	list, hasList := dig(doc, "plugins", transferPlugin, "unpack_config").([]any)
	for _, e := range list {
		if m, ok := e.(map[string]any); ok && m["snapshotter"] == "strata" {
			found = true
		}
	}
	if !found {
		if !hasList {
			// Any unpack_config list replaces containerd's built-in one,
			// whose entry unpacks for the default snapshotter: keep it, or
			// pulls through the transfer service (CRI's, for one) for
			// overlayfs fail with "no unpack platforms".
			t.appendBlock(fmt.Sprintf(`# containerd's default entry, which a listed one would otherwise replace.
[[plugins.%q.unpack_config]]
  platform = %q
  snapshotter = "overlayfs"
  differ = "walking"`, transferPlugin, platform))
		}
		t.appendBlock(fmt.Sprintf(`# Parallel unpack is the faster path on strata for images of several
# layers (strata's BENCHMARKS.md): max_concurrent_unpacks = 4
# in [plugins.%q].
[[plugins.%q.unpack_config]]
  platform = %q
  snapshotter = "strata"
  differ = "walking"`, transferPlugin, transferPlugin, platform))
	}

	if o.CRI {
		table, key := criTable(version), "snapshotter"
		if dig(doc, append(table, key)...) != "strata" {
			t.setKey(table, key, `"strata"`)
		}
	}
	if err := patchRuntimes(doc, &t, version, o); err != nil {
		return nil, false, err
	}
	out := []byte(strings.Join(t.lines, "\n"))
	if err := check(out, version, o); err != nil {
		return nil, false, err
	}
	return out, string(out) != string(in), nil
}

// criTable is the table holding CRI's snapshotter in a config of version.
func criTable(version int64) []string {
	if version == 2 {
		return []string{"plugins", criV2, "containerd"}
	}
	return []string{"plugins", criImagesV3}
}

// runtimesTable is the table holding CRI's runtimes and default runtime in
// a config of version.
func runtimesTable(version int64) []string {
	if version == 2 {
		return []string{"plugins", criV2, "containerd"}
	}
	return []string{"plugins", criRuntimeV3, "containerd"}
}

// check decodes the patched file and checks it says what was asked. The
// edits work on tables written as [headers]; a key the file sets another
// way (dotted keys, an inline table) would leave the file invalid or
// unchanged, and containerd would then fail to start or ignore strata:
// refuse, before anything is written.
func check(out []byte, version int64, o Options) error {
	var doc map[string]any
	if err := toml.Unmarshal(out, &doc); err != nil {
		return fmt.Errorf("the patched file would not parse (%v): the file sets a key strata edits in a form this tool does not edit (dotted keys or an inline table); register strata by hand", err)
	}
	runtimes := runtimesTable(version)
	cri := append(criTable(version), "snapshotter")
	type setting struct {
		path  []string
		value string
	}
	want := []setting{{[]string{"proxy_plugins", "strata", "address"}, o.Address}}
	if o.CRI {
		want = append(want, setting{cri, "strata"})
	}
	if o.RuntimeHandler != "" {
		want = append(want, setting{append(slices.Clone(runtimes), "runtimes", o.RuntimeHandler, "snapshotter"), "strata"})
	}
	if o.BootstrapHandler != "" {
		want = append(want,
			setting{append(slices.Clone(runtimes), "runtimes", o.BootstrapHandler, "snapshotter"), builtinSnapshotter},
			setting{append(slices.Clone(runtimes), "default_runtime_name"), o.RuntimeHandler})
	}
	for _, w := range want {
		if got := dig(doc, w.path...); got != w.value {
			return fmt.Errorf("the patched file sets %s to %v, not %q: the file sets it in a form this tool does not edit (dotted keys or an inline table); register strata by hand", strings.Join(w.path, "."), got, w.value)
		}
	}
	return nil
}

// patchRuntimes adds strata's runtime handler and, in default-snapshotter
// mode, pins the bootstrap handler to overlayfs and makes strata's handler
// the default.
func patchRuntimes(doc map[string]any, t *text, version int64, o Options) error {
	for _, name := range []string{o.RuntimeHandler, o.BootstrapHandler} {
		if name != "" && strings.ContainsAny(name, ".\"'[] \t\n") {
			return fmt.Errorf("runtime handler %q: must be a plain name", name)
		}
	}
	if o.BootstrapHandler != "" && (!o.CRI || o.RuntimeHandler == "") {
		return fmt.Errorf("a bootstrap runtime handler needs strata as CRI's snapshotter and a runtime handler for strata")
	}
	if o.BootstrapHandler != "" && o.BootstrapHandler == o.RuntimeHandler {
		return fmt.Errorf("runtime handler %q: strata's and the bootstrap handler must differ", o.RuntimeHandler)
	}
	if o.RuntimeHandler == "" {
		return nil
	}
	base := runtimesTable(version)
	// The runtime strata's handler copies: the bootstrap handler, or the
	// default runtime.
	from := o.BootstrapHandler
	if from == "" {
		from, _ = dig(doc, append(base, "default_runtime_name")...).(string)
	}
	if from == "" || from == o.RuntimeHandler {
		from = "runc"
	}
	if err := setRuntime(doc, t, base, o.RuntimeHandler, from, "strata",
		"# Pods whose runtime handler is this one run on strata; the rest is a copy\n# of the runtime "+from+"."); err != nil {
		return err
	}
	if o.BootstrapHandler == "" {
		return nil
	}
	if err := setRuntime(doc, t, base, o.BootstrapHandler, o.BootstrapHandler, builtinSnapshotter,
		"# strata's own pod runs with this handler, on containerd's overlayfs, so it\n# starts (and pulls its image) while strata is down."); err != nil {
		return err
	}
	if dig(doc, append(base, "default_runtime_name")...) != o.RuntimeHandler {
		t.setKey(base, "default_runtime_name", fmt.Sprintf("%q", o.RuntimeHandler))
	}
	return nil
}

// setRuntime writes the CRI runtime handler name as a copy of the runtime
// from (its cgroup driver, runc binary, options) with the given snapshotter,
// and tells CRI's image service about it (runtime_platforms): containerd
// learns a snapshotter's filesystem, which the kubelet's stats ask about,
// only from there or from its default, and pulls for the handler's pods
// (those that name it) into that snapshotter.
func setRuntime(doc map[string]any, t *text, base []string, name, from, snapshotter, comment string) error {
	want := map[string]any{}
	if m, ok := dig(doc, append(base, "runtimes", from)...).(map[string]any); ok {
		want = maps.Clone(m)
	}
	// A partial runc table (only its options, say) leaves containerd's
	// defaults for the rest; a copy must name the runtime itself, or pods
	// fail with "container.Runtime.Name must be set".
	if _, ok := want["runtime_type"]; !ok {
		want["runtime_type"] = "io.containerd.runc.v2"
	}
	path := append(slices.Clone(base), "runtimes", name)
	switch {
	case name == from:
		// The runtime itself: its own keys only, the rest (its options
		// table, comments) as written.
		if _, named := dig(doc, append(path, "runtime_type")...).(string); !named {
			t.setKey(path, "runtime_type", fmt.Sprintf("%q", want["runtime_type"]))
		}
		if dig(doc, append(path, "snapshotter")...) != snapshotter {
			t.setKey(path, "snapshotter", fmt.Sprintf("%q", snapshotter))
		}
	case !reflect.DeepEqual(dig(doc, path...), withKey(want, "snapshotter", snapshotter)):
		want["snapshotter"] = snapshotter
		block, err := renderTable(path, want, "")
		if err != nil {
			return err
		}
		t.removeTables(path)
		t.appendBlock(comment + "\n" + strings.TrimRight(block, "\n"))
	}
	platform := []string{"plugins", criImagesV3, "runtime_platforms", name}
	if dig(doc, append(platform, "snapshotter")...) != snapshotter {
		t.setKey(platform, "snapshotter", fmt.Sprintf("%q", snapshotter))
	}
	return nil
}

// withKey returns a copy of m with k set to v.
func withKey(m map[string]any, k string, v any) map[string]any {
	c := maps.Clone(m)
	c[k] = v
	return c
}

// renderTable writes m as the TOML table at path: its plain keys, then each
// sub-table under its full header, keys sorted.
func renderTable(path []string, m map[string]any, indent string) (string, error) {
	var b strings.Builder
	b.WriteString(indent + "[" + tableName(path) + "]\n")
	keys := slices.Sorted(maps.Keys(m))
	var subs []string
	for _, k := range keys {
		if _, ok := m[k].(map[string]any); ok {
			subs = append(subs, k)
			continue
		}
		line, err := toml.Marshal(map[string]any{k: m[k]})
		if err != nil {
			return "", fmt.Errorf("render %s.%s: %w", tableName(path), k, err)
		}
		b.WriteString(indent + "  " + string(line))
	}
	for _, k := range subs {
		sub, err := renderTable(append(slices.Clone(path), k), m[k].(map[string]any), indent+"  ")
		if err != nil {
			return "", err
		}
		b.WriteString(sub)
	}
	return b.String(), nil
}

// tableName joins a key path for a table header, quoting the keys that need it.
func tableName(path []string) string {
	quoted := make([]string, len(path))
	for i, p := range path {
		quoted[i] = p
		if strings.ContainsAny(p, ".\"' ") {
			quoted[i] = fmt.Sprintf("%q", p)
		}
	}
	return strings.Join(quoted, ".")
}

// dig returns doc[path[0]][path[1]]…, or nil.
func dig(doc map[string]any, path ...string) any {
	var v any = doc
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[p]
	}
	return v
}

// text is a TOML file as lines, edited by table.
type text struct{ lines []string }

// header parses a table header line into its key path; ok is false for
// other lines. Array-of-tables headers ([[…]]) count as tables too.
func header(line string) (path []string, ok bool) {
	s := strings.TrimSpace(line)
	if i := strings.Index(s, "#"); i >= 0 && !strings.ContainsAny(s[:i], `"'`) {
		s = strings.TrimSpace(s[:i])
	}
	if !strings.HasPrefix(s, "[") || !strings.HasSuffix(s, "]") {
		return nil, false
	}
	s = strings.TrimSpace(strings.Trim(s, "[]"))
	for s != "" {
		var part string
		switch s[0] {
		case '"', '\'':
			end := strings.IndexByte(s[1:], s[0])
			if end < 0 {
				return nil, false
			}
			part, s = s[1:end+1], s[end+2:]
		default:
			end := strings.IndexByte(s, '.')
			if end < 0 {
				end = len(s)
			}
			part, s = strings.TrimSpace(s[:end]), s[end:]
		}
		path = append(path, part)
		s = strings.TrimSpace(s)
		s = strings.TrimSpace(strings.TrimPrefix(s, "."))
	}
	return path, true
}

func hasPrefix(path, prefix []string) bool {
	return len(path) >= len(prefix) && reflect.DeepEqual(path[:len(prefix)], prefix)
}

// removeTables deletes every table whose path starts with prefix, header
// and keys (through the line before the next header).
func (t *text) removeTables(prefix []string) {
	var out []string
	skipping := false
	for _, l := range t.lines {
		if p, ok := header(l); ok {
			skipping = hasPrefix(p, prefix)
		}
		if !skipping {
			out = append(out, l)
		}
	}
	t.lines = out
}

// appendBlock adds a block at the end, after a blank line.
func (t *text) appendBlock(block string) {
	for len(t.lines) > 0 && strings.TrimSpace(t.lines[len(t.lines)-1]) == "" {
		t.lines = t.lines[:len(t.lines)-1]
	}
	// Line by line, so later edits in the same run see the block's headers.
	t.lines = append(append(t.lines, ""), strings.Split(block, "\n")...)
	t.lines = append(t.lines, "")
}

// setKey sets key = value in the table at path: replacing the key's line if
// the table has one, adding it under the table's header if not, and adding
// the table at the end if the file has no header for it.
func (t *text) setKey(path []string, key, value string) {
	for i, l := range t.lines {
		p, ok := header(l)
		if !ok || !reflect.DeepEqual(p, path) {
			continue
		}
		indent := strings.Repeat(" ", len(l)-len(strings.TrimLeft(l, " "))+2)
		for j := i + 1; j < len(t.lines); j++ {
			if _, ok := header(t.lines[j]); ok {
				break
			}
			k, _, found := strings.Cut(t.lines[j], "=")
			if found && strings.Trim(strings.TrimSpace(k), `"'`) == key {
				lead := t.lines[j][:len(t.lines[j])-len(strings.TrimLeft(t.lines[j], " \t"))]
				t.lines[j] = lead + key + " = " + value
				return
			}
		}
		t.lines = append(t.lines[:i+1], append([]string{indent + key + " = " + value}, t.lines[i+1:]...)...)
		return
	}
	t.appendBlock(fmt.Sprintf("[%s]\n  %s = %s", tableName(path), key, value))
}
