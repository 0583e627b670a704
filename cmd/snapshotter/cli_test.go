package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs"

	"github.com/strata-snapshotter/strata/accounting"
	"github.com/strata-snapshotter/strata/admin"
	"github.com/strata-snapshotter/strata/internal/testutil"
)

// runBinary runs the built strata-snapshotter with args.
func runBinary(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	cmd := exec.Command(binary, args...)
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return out.String(), errOut.String(), code
}

// TestCommandLine: the command line behaves as ctr's and nerdctl's do: help
// lists the commands, the global options and the config-only keys; help and
// version are commands; global options come before or after the command,
// a command's options before or after its arguments; a usage mistake exits
// 2 with one message, an unknown command names itself.
func TestCommandLine(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		out, errOut, code := runBinary(t, args...)
		if code != 0 || errOut != "" {
			t.Fatalf("%v: exit %d, stderr %q", args, code, errOut)
		}
		for _, want := range []string{"ls ", "tree ", "inspect ", "du ", "fsck ", "containerd-config ", "health ", "version ", "help ",
			"--config FILE", "--root DIR", "--address SOCKET", "--log-format FORMAT", "sync_remove, sync_on_commit, share_files, mount_options, shutdown_timeout"} {
			if !strings.Contains(out, want) {
				t.Errorf("%v lacks %q:\n%s", args, want, out)
			}
		}
	}
	if out, errOut, code := runBinary(t, "help", "--log-level", "debug"); code != 0 || !strings.Contains(out, "Commands:") {
		t.Errorf("help with a global option: exit %d, %s", code, errOut)
	}
	out, _, code := runBinary(t, "help", "inspect")
	if code != 0 || !strings.Contains(out, "strata-snapshotter inspect [-n NAMESPACE] [--json] NAME|KEY") || !strings.Contains(out, "--namespace NAMESPACE") || !strings.Contains(out, "Global options:") {
		t.Errorf("help inspect: exit %d\n%s", code, out)
	}
	for _, args := range [][]string{{"version"}, {"--version"}, {"-v"}} {
		out, _, code := runBinary(t, args...)
		if code != 0 || !strings.HasPrefix(out, "strata-snapshotter github.com/strata-snapshotter/strata v") || !strings.Contains(out, " go1.") {
			t.Errorf("%v: exit %d, %q", args, code, out)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--no-such-flag"}, "flag provided but not defined: --no-such-flag"},
		{[]string{"ls", "extra"}, "strata-snapshotter ls: takes no arguments, got 1: extra"},
		{[]string{"inspect"}, "strata-snapshotter inspect: takes one argument, got 0"},
		{[]string{"lss"}, `unknown command "lss"`},
		{[]string{"fsck", "--repair", "--discard-unindexed"}, "do not go together"},
	} {
		out, errOut, code := runBinary(t, tc.args...)
		if code != 2 || out != "" || !strings.Contains(errOut, tc.want) || strings.Count(errOut, "\n") > 2 {
			t.Errorf("%v: exit %d, stdout %q, stderr %q; want 2 and only %q", tc.args, code, out, errOut, tc.want)
		}
	}
}

// TestOperatorCommandsByName: users know snapshots by the names ctr, nerdctl
// and crictl show (a container's ID, a layer's chain ID) and by containerd
// namespace, not by the NAMESPACE/ID/NAME keys containerd gives strata.
// Every command finds the daemon from the options before or after it, or
// from the config file.
func TestOperatorCommandsByName(t *testing.T) {
	testutil.RequiresRoot(t)
	root := t.TempDir()
	d := startDaemon(t, root)
	if out, _, code := d.subcommand(t, "tree"); code != 0 || out != "no snapshots\n" {
		t.Fatalf("tree of an empty store: exit %d, %q", code, out)
	}
	sn := d.snapshotter()
	writeLayer(t, sn, "ns1/1/extract", "", "ns1/2/sha256:base", 2048)
	writeLayer(t, sn, "ns1/3/web", "ns1/2/sha256:base", "", 10)
	writeLayer(t, sn, "ns2/1/extract", "", "ns2/2/sha256:base", 2048)
	writeLayer(t, sn, "ns2/3/web", "ns2/2/sha256:base", "", 20)
	// containerd stores a layer pulled into another namespace once: ns3's
	// container stands on the layer under ns1's key.
	writeLayer(t, sn, "ns3/4/web", "ns1/2/sha256:base", "", 30)

	if _, errOut, code := d.subcommand(t, "inspect", "web"); code != 1 || !strings.Contains(errOut, "ns1/3/web, ns2/3/web, ns3/4/web") || !strings.Contains(errOut, "-n NAMESPACE") || strings.Contains(errOut, "HTTP") {
		t.Errorf("inspect of a name in two namespaces: exit %d, %q", code, errOut)
	}
	for _, args := range [][]string{{"inspect", "-n", "ns2", "web", "--json"}, {"inspect", "web", "--namespace", "ns2", "--json"}, {"inspect", "ns2/3/web", "--json"}} {
		out, errOut, code := d.subcommand(t, args...)
		var s admin.Snapshot
		if err := json.Unmarshal([]byte(out), &s); code != 0 || err != nil || s.Key != "ns2/3/web" || s.Namespace != "ns2" || s.Name != "web" || s.Usage.Bytes != 20 {
			t.Errorf("%v: exit %d, %v, %+v %s", args, code, err, s, errOut)
		}
		// The mounts carry containerd's field names, as ctr prints them.
		var raw struct {
			Mounts []map[string]any `json:"mounts"`
			Usage  map[string]any   `json:"usage"`
		}
		json.Unmarshal([]byte(out), &raw)
		if len(raw.Mounts) != 1 || raw.Mounts[0]["type"] != "overlay" || raw.Mounts[0]["options"] == nil || raw.Usage["allocated_bytes"] == nil {
			t.Errorf("%v: mounts %v, usage %v", args, raw.Mounts, raw.Usage)
		}
	}
	ls, _, _ := d.subcommand(t, "ls", "-n", "ns1")
	if !strings.Contains(ls, "NAMESPACE") || !hasRow(ls, "ns1", "web", "active", "sha256:base", "10.0 B", "ns1/3/web") || !strings.Contains(ls, "sha256:base") || !strings.Contains(ls, "2.0 KiB") || strings.Contains(ls, "ns2") {
		t.Errorf("ls -n ns1:\n%s", ls)
	}
	// A namespace's snapshots and the layers they stand on, whichever
	// namespace's key those carry; unique and shared across the store.
	ls3, _, _ := d.subcommand(t, "ls", "-n", "ns3")
	if !hasRow(ls3, "ns3", "web", "active", "sha256:base") || !hasRow(ls3, "ns1", "sha256:base", "committed") || strings.Contains(ls3, "ns2") || strings.Count(ls3, "\n") != 3 {
		t.Errorf("ls -n ns3:\n%s", ls3)
	}
	if tree, _, _ := d.subcommand(t, "tree", "-n", "ns3"); !strings.Contains(tree, "ns1/2/sha256:base (committed") || !strings.Contains(tree, "└── ns3/4/web (active") || strings.Count(tree, "\n") != 3 {
		t.Errorf("tree -n ns3 (the shared layer's children in other namespaces left out):\n%s", tree)
	}
	out, _, _ := d.subcommand(t, "du", "--json", "-n", "ns3")
	var r accounting.Report
	if err := json.Unmarshal([]byte(out), &r); err != nil || len(r.Leaves) != 1 || r.Leaves[0].Key != "ns3/4/web" || r.Leaves[0].UniqueBytes != 30 || r.Leaves[0].SharedBytes != 2048 {
		t.Errorf("du -n ns3: %v %+v", err, r)
	}
	if out, errOut, code := d.subcommand(t, "inspect", "-n", "ns3", "sha256:base"); code != 0 || !strings.Contains(out, "ns1/2/sha256:base") {
		t.Errorf("inspect -n ns3 of the layer its container stands on: exit %d, %s", code, errOut)
	}
	if _, errOut, code := d.subcommand(t, "inspect", "-n", "ns4", "sha256:base"); code != 1 || !strings.Contains(errOut, "strata has ns1/2/sha256:base, ns2/2/sha256:base") {
		t.Errorf("inspect -n of a name only other namespaces have: exit %d, %s", code, errOut)
	}

	// Global options before the command.
	if out, errOut, code := runBinary(t, "--admin-address", d.admin, "ls"); code != 0 || !strings.Contains(out, "ns2/3/web") {
		t.Errorf("--admin-address before ls: exit %d, %s", code, errOut)
	}
	// The config file names the daemon's address and root; every command
	// finds them there.
	cfg := filepath.Join(t.TempDir(), "strata.toml")
	if err := os.WriteFile(cfg, []byte("root = \""+root+"\"\naddress = \""+d.address+"\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, errOut, code := runBinary(t, "inspect", "--config", cfg, "-n", "ns1", "web"); code != 0 || !strings.Contains(out, "ns1/3/web") {
		t.Errorf("inspect --config: exit %d, %s", code, errOut)
	}
	d.stop()
	if out, errOut, code := runBinary(t, "--config", cfg, "fsck"); code != 0 || !strings.Contains(out, root+": clean") {
		t.Errorf("fsck --config: exit %d, %q %q; want the config's root checked", code, out, errOut)
	}
}

// TestRequestLog: strata's log says why containerd got an error. At the
// default level, every call strata refused is a warning naming its method,
// key and code; at debug, every call is logged with its duration, NotFound
// and AlreadyExists (containerd's ordinary questions) too. The JSON format
// has containerd's RFC3339Nano timestamps.
func TestRequestLog(t *testing.T) {
	testutil.RequiresRoot(t)
	provoke := func(t *testing.T, sn snapshots.Snapshotter) {
		ctx := context.Background()
		writeLayer(t, sn, "base-active", "", "base", 1)
		writeLayer(t, sn, "child", "base", "", 1)
		for _, tc := range []struct {
			err  error
			want error
		}{
			{func() error { _, err := sn.Prepare(ctx, "child", "base"); return err }(), errdefs.ErrAlreadyExists},
			{func() error { _, err := sn.Stat(ctx, "missing"); return err }(), errdefs.ErrNotFound},
			{func() error {
				_, err := sn.Prepare(ctx, "bad", "", snapshots.WithLabels(map[string]string{"k": strings.Repeat("v", 5000)}))
				return err
			}(), errdefs.ErrInvalidArgument},
			{sn.Remove(ctx, "base"), errdefs.ErrFailedPrecondition},
		} {
			if !errors.Is(tc.err, tc.want) {
				t.Fatalf("provoked %v, want %v", tc.err, tc.want)
			}
		}
	}

	t.Run("info", func(t *testing.T) {
		d := startDaemon(t, t.TempDir(), "--log-level", "info")
		provoke(t, d.snapshotter())
		d.stop()
		logs := d.logs()
		for _, want := range []string{
			`level=warning msg="call failed" code=InvalidArgument`,
			`key=bad method=Prepare`,
			`level=warning msg="call failed" code=FailedPrecondition`,
			`key=base method=Remove`,
			`msg="strata-snapshotter stopped"`,
			`log_level=info metrics_address=`,
		} {
			if !strings.Contains(logs, want) {
				t.Errorf("log at info lacks %q:\n%s", want, logs)
			}
		}
		if strings.Contains(logs, "code=NotFound") || strings.Contains(logs, "code=OK") {
			t.Errorf("log at info has debug calls:\n%s", logs)
		}
	})
	t.Run("debug json", func(t *testing.T) {
		d := startDaemon(t, t.TempDir(), "--log-level", "debug", "--log-format", "json")
		provoke(t, d.snapshotter())
		d.stop()
		codes := map[string]bool{}
		for _, line := range strings.Split(strings.TrimSpace(d.logs()), "\n") {
			var entry map[string]any
			if err := json.Unmarshal([]byte(line), &entry); err != nil {
				t.Fatalf("not a JSON line: %q", line)
			}
			ts, _ := entry["time"].(string)
			if _, err := time.Parse(time.RFC3339Nano, ts); err != nil || !strings.Contains(ts, ".") {
				t.Errorf("time %q is not RFC3339Nano", ts)
			}
			if code, ok := entry["code"].(string); ok {
				codes[code] = true
				if msg, _ := entry["error"].(string); strings.Contains(msg, "rpc error") {
					t.Errorf("error logged with gRPC's wrapping: %s", line)
				}
				if entry["method"] == nil || entry["duration"] == nil {
					t.Errorf("call without method or duration: %s", line)
				}
			}
		}
		for _, want := range []string{"OK", "AlreadyExists", "NotFound", "InvalidArgument", "FailedPrecondition"} {
			if !codes[want] {
				t.Errorf("no call logged with code %s (logged: %v)", want, codes)
			}
		}
	})
}

// hasRow says whether a table has a row of exactly these cells.
func hasRow(table string, cells ...string) bool {
	for _, line := range strings.Split(table, "\n") {
		var got []string
		for _, c := range strings.Split(line, "  ") {
			if c = strings.TrimSpace(c); c != "" {
				got = append(got, c)
			}
		}
		if len(got) >= len(cells) && strings.Join(got[:2], "|") == strings.Join(cells[:2], "|") {
			ok := true
			for _, c := range cells {
				ok = ok && slices.Contains(got, c)
			}
			if ok {
				return true
			}
		}
	}
	return false
}
