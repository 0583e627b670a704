package admin

import (
	"context"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containerd/containerd/v2/core/snapshots"

	"github.com/strata-snapshotter/strata/internal/testutil"
	"github.com/strata-snapshotter/strata/snapshotter"
)

// serve runs the admin API for a real snapshotter on a unix socket and
// returns a client for it.
func serve(t *testing.T) (snapshotter.Snapshotter, *Client, string) {
	t.Helper()
	testutil.RequiresRoot(t)
	ctx := context.Background()
	sn, err := snapshotter.New(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sn.Close() })
	socket := filepath.Join(testutil.ShortDir(t), "admin.sock")
	l, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: Handler(sn)}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	return sn, NewClient(socket), socket
}

// layer prepares key on parent with n bytes in one file, and commits it as
// name unless name is "".
func layer(t *testing.T, sn snapshots.Snapshotter, key, parent, name string, n int) {
	t.Helper()
	testutil.WriteLayer(t, sn, key, parent, name, map[string]string{"f": strings.Repeat("x", n)})
}

// TestAPI: the admin API over a real store in which containerd's keys
// (NAMESPACE/ID/NAME) hold a layer two namespaces share under the first
// one's key, as containerd stores it.
func TestAPI(t *testing.T) {
	sn, c, socket := serve(t)
	ctx := context.Background()
	layer(t, sn, "a/1/extract", "", "a/2/sha256:base", 1000)
	layer(t, sn, "a/3/web", "a/2/sha256:base", "", 10)
	layer(t, sn, "b/4/web", "a/2/sha256:base", "", 20)

	all, err := c.Snapshots(ctx, "")
	if err != nil || len(all) != 3 {
		t.Fatalf("snapshots: %v %+v", err, all)
	}
	base := all[0]
	if base.Key != "a/2/sha256:base" || base.Namespace != "a" || base.Name != "sha256:base" || base.Kind != "committed" ||
		base.Usage.Bytes != 1000 || base.Leaf || strings.Join(base.Children, " ") != "a/3/web b/4/web" {
		t.Errorf("base: %+v", base)
	}
	// Namespace b: its container and the layer it stands on, a's.
	bs, err := c.Snapshots(ctx, "b")
	if err != nil || len(bs) != 2 || bs[0].Key != "a/2/sha256:base" || bs[1].Key != "b/4/web" {
		t.Errorf("snapshots of b: %v %+v", err, bs)
	}

	// One snapshot by key, by name in a namespace, or by a name only one
	// namespace has; measured, with containerd's mount fields.
	for _, q := range [][2]string{{"", "b/4/web"}, {"b", "web"}, {"", "sha256:base"}} {
		s, err := c.Snapshot(ctx, q[0], q[1])
		if err != nil {
			t.Errorf("snapshot %v: %v", q, err)
			continue
		}
		if s.Name == "web" && (s.Usage.Bytes != 20 || s.Usage.AllocatedBytes == 0 || len(s.Mounts) != 1 || s.Mounts[0].Type != "overlay") {
			t.Errorf("snapshot %v: %+v", q, s)
		}
	}
	if _, err := c.Snapshot(ctx, "", "web"); err == nil || !strings.Contains(err.Error(), "a/3/web, b/4/web") || strings.Contains(err.Error(), "HTTP") {
		t.Errorf("a name in two namespaces: %v", err)
	}
	if _, err := c.Snapshot(ctx, "", "nope"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown name: %v, want ErrNotFound", err)
	}
	if _, err := c.Snapshot(ctx, "c", "sha256:base"); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), "strata has a/2/sha256:base") {
		t.Errorf("a name only another namespace has: %v", err)
	}

	// du: sharing across the store; a namespace selects the leaves.
	r, err := c.DiskUsage(ctx, "")
	if err != nil || r.PhysicalBytes != 1030 || r.LogicalBytes != 2030 || r.SavedBytes != 1000 || len(r.Leaves) != 2 {
		t.Errorf("du: %v %+v", err, r)
	}
	r, err = c.DiskUsage(ctx, "b")
	if err != nil || len(r.Leaves) != 1 || r.Leaves[0].Key != "b/4/web" || r.Leaves[0].UniqueBytes != 20 || r.Leaves[0].SharedBytes != 1000 {
		t.Errorf("du of b: %v %+v", err, r)
	}

	// A request without a key is the client's mistake.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	resp, err := hc.Get("http://strata/v1/snapshot")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("/v1/snapshot without key: HTTP %d", resp.StatusCode)
	}
}

// TestClientSaysWhyItCannotReachTheDaemon: no daemon, or one whose socket
// the user may not use, is said in words an operator acts on.
func TestClientSaysWhyItCannotReachTheDaemon(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.sock")
	if _, err := NewClient(missing).Snapshots(context.Background(), ""); err == nil || !strings.Contains(err.Error(), "is strata-snapshotter running") {
		t.Errorf("no daemon: %v", err)
	}
}

func TestSplitKey(t *testing.T) {
	for _, tc := range []struct{ key, ns, name string }{
		{"default/12/sha256:abc", "default", "sha256:abc"},
		{"k8s.io/3/a/b", "k8s.io", "a/b"},
		{"plain", "", "plain"},
		{"ns/x/name", "", "ns/x/name"},
		{"/1/name", "", "/1/name"},
	} {
		ns, name, ok := SplitKey(tc.key)
		if ns != tc.ns || name != tc.name || ok != (tc.ns != "") {
			t.Errorf("SplitKey(%q) = %q, %q, %v", tc.key, ns, name, ok)
		}
	}
}
