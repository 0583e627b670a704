package integration

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestPatchedDefaultConfigLoads: containerd's own default config, patched
// by strata-snapshotter containerd-config, is one containerd accepts, and
// containerd reads strata's registration from it.
func TestPatchedDefaultConfigLoads(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "config.toml")
	e := &Env{t: t}
	def := e.run(filepath.Join(toolsBin, "containerd"), "config", "default")
	if err := os.WriteFile(cfg, []byte(def), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := e.run(strataBinary, "containerd-config", "--config", "/dev/null", "--file", cfg, "--cri", "--write"); out != "changed\n" {
		t.Fatalf("patch said %q", out)
	}
	dump := e.run(filepath.Join(toolsBin, "containerd"), "--config", cfg, "config", "dump")
	for _, want := range []string{"[proxy_plugins.strata]", "address = '/run/strata/strata.sock'", "capabilities = ['rebase', 'remap-ids']", "root = '/var/lib/strata'", "snapshotter = 'strata'"} {
		if !strings.Contains(dump, want) {
			t.Errorf("containerd's view of the patched config lacks %q", want)
		}
	}
	if t.Failed() {
		t.Logf("config dump:\n%s", dump)
	}
}

// readmeSnippet is a containerd config block of the README: the output of
// `strata-snapshotter containerd-config ARGS` on a file holding only
// "version = 3", whole or (excerpt) a part of it.
type readmeSnippet struct {
	args    []string
	excerpt bool
	text    string
}

var readmeSnippetRE = regexp.MustCompile("(?s)<!-- containerd-config([^>]*?)( \\(excerpt\\))? -->\n```toml\n(.*?)```")

func readmeSnippets(t *testing.T) []readmeSnippet {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	var snippets []readmeSnippet
	for _, m := range readmeSnippetRE.FindAllStringSubmatch(string(b), -1) {
		snippets = append(snippets, readmeSnippet{args: strings.Fields(m[1]), excerpt: m[2] != "", text: m[3]})
	}
	return snippets
}

// TestReadmeContainerdConfig: every containerd config the README shows is
// what containerd-config writes, and the README's registration, loaded by a
// real containerd, pulls and runs an image on strata and, with plain ctr
// commands, on containerd's overlayfs.
func TestReadmeContainerdConfig(t *testing.T) {
	snippets := readmeSnippets(t)
	var whole string
	for _, s := range snippets {
		dir := t.TempDir()
		file, strataCfg := filepath.Join(dir, "config.toml"), filepath.Join(dir, "strata.toml")
		os.WriteFile(file, []byte("version = 3\n"), 0o644)
		os.WriteFile(strataCfg, nil, 0o644) // strata's defaults, whatever this host has
		e := &Env{t: t}
		out := e.run(append([]string{strataBinary, "containerd-config", "--config", strataCfg, "--file", file}, s.args...)...)
		if s.excerpt && !strings.Contains(out, s.text) || !s.excerpt && out != s.text {
			t.Errorf("README's containerd-config %v block:\n%s\nis not what it writes:\n%s", s.args, s.text, out)
		}
		if len(s.args) == 0 && !s.excerpt {
			whole = s.text
		}
	}
	if len(snippets) < 2 || whole == "" {
		t.Fatalf("found %d containerd-config blocks in README.md, want the whole default one and the --cri excerpt", len(snippets))
	}

	e := newEnv(t, EnvOptions{Registration: whole})
	e.ctr("images", "pull", "--plain-http", "--hosts-dir", hostsDir, imgThreeLayers)
	e.ctr("images", "pull", "--plain-http", "--hosts-dir", hostsDir, "--snapshotter", "strata", imgThreeLayers)
	for _, run := range [][]string{
		{"run", "--rm", "--net-host", imgThreeLayers, "on-overlayfs"},
		{"run", "--rm", "--snapshotter", "strata", "--net-host", imgThreeLayers, "on-strata"},
	} {
		if out := e.ctr(append(run, "cat", "/l2", "/l3")...); out != "layer 2\nlayer 3\n" {
			t.Errorf("ctr %v printed %q", run, out)
		}
	}
	if n := len(e.layerDirs()); n < 3 {
		t.Errorf("strata holds %d layer directories, want the image's 3 and its container's", n)
	}
}
