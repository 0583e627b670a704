package main

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/strata-snapshotter/strata/internal/testutil"
	"github.com/strata-snapshotter/strata/snapshotter"
)

// fuzzServer is one strata served over a unix socket in this process,
// shared by every input of a fuzzing run.
var fuzzServer struct {
	once   sync.Once
	err    error
	dir    string // holds root/ and nothing else strata may touch
	root   string
	client snapshotsapi.SnapshotsClient
}

func fuzzClient(t *testing.T) (snapshotsapi.SnapshotsClient, string, string) {
	fuzzServer.once.Do(func() {
		dir, err := os.MkdirTemp("", "strata-fuzz-")
		if err != nil {
			fuzzServer.err = err
			return
		}
		fuzzServer.dir, fuzzServer.root = dir, filepath.Join(dir, "root")
		sn, err := snapshotter.New(context.Background(), fuzzServer.root, snapshotter.WithSyncRemove)
		if err != nil {
			fuzzServer.err = err
			return
		}
		l, err := net.Listen("unix", filepath.Join(dir, "s.sock"))
		if err != nil {
			fuzzServer.err = err
			return
		}
		go newGRPCServer(sn).Serve(l)
		conn, err := grpc.NewClient("unix://"+filepath.Join(dir, "s.sock"), grpc.WithTransportCredentials(insecure.NewCredentials()),
			grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
		if err != nil {
			fuzzServer.err = err
			return
		}
		fuzzServer.client = snapshotsapi.NewSnapshotsClient(conn)
	})
	if fuzzServer.err != nil {
		t.Fatal(fuzzServer.err)
	}
	return fuzzServer.client, fuzzServer.dir, fuzzServer.root
}

// tree lists every path under dir.
func tree(t *testing.T, dir string) string {
	var paths []string
	filepath.WalkDir(dir, func(p string, _ os.DirEntry, err error) error {
		if err == nil {
			paths = append(paths, p)
		}
		return nil
	})
	sort.Strings(paths)
	return strings.Join(paths, "\n")
}

// FuzzSnapshotsAPI sends hostile keys, parents, labels, fieldpaths and
// filters through the gRPC API. Every answer must be OK or one of the
// documented codes; the server must not panic; nothing may appear outside
// the root; and a rejected request must leave the disk as it was.
func FuzzSnapshotsAPI(f *testing.F) {
	testutil.RequiresRoot(f)
	for _, seed := range [][6]string{
		{"key", "", "label", "value", "labels.label", "name==key"},
		{"", "", "", "", "", ""},
		{"../../../../etc/passwd", "..", "a", "b", "labels", "parent==\"..\""},
		{"a/b/c", "/", "containerd.io/snapshot.ref", "sha256:x", "labels.containerd.io/snapshot.ref", "labels.\"containerd.io/snapshot.ref\""},
		{"nul\x00key", "nul\x00parent", "k\x00", "v\x00", "labels.k\x00", "name~=\"[\""},
		{"k", "k", strings.Repeat("l", 5000), "v", "parent", "kind==committed,labels.x"},
		{"k", "", "l", strings.Repeat("v", 1<<20), "", "kind=="},
	} {
		f.Add(seed[0], seed[1], seed[2], seed[3], seed[4], seed[5])
	}
	f.Fuzz(func(t *testing.T, key, parent, labelKey, labelValue, fieldpath, filter string) {
		for _, s := range []string{key, parent, labelKey, labelValue, fieldpath, filter} {
			if !utf8.ValidString(s) {
				t.Skip("protobuf strings are UTF-8; the client refuses others before sending")
			}
			// Megabyte inputs are TestHugeInputs' job; here they would
			// only slow the mutator down.
			if len(s) > 64<<10 {
				t.Skip("over 64 KiB")
			}
		}
		exerciseAPI(t, key, parent, labelKey, labelValue, fieldpath, filter)
	})
}

// TestHugeInputs: megabyte keys, parents, labels, fieldpaths and filters get
// the same treatment as FuzzSnapshotsAPI's inputs.
func TestHugeInputs(t *testing.T) {
	testutil.RequiresRoot(t)
	long := strings.Repeat("k", 1<<20)
	for _, in := range [][6]string{
		{long, long, "l", "v", "labels." + long, long},
		{"k", "", long, "v", "labels.l", "name==k"},
		{"k", "", "l", long, "labels.l", "labels.l==" + long},
		{"k", long, long, long, long, long},
	} {
		exerciseAPI(t, in[0], in[1], in[2], in[3], in[4], in[5])
	}
}

// exerciseAPI sends one set of inputs through every call of the API and
// checks the answers and the disk.
func exerciseAPI(t *testing.T, key, parent, labelKey, labelValue, fieldpath, filter string) {
	{
		c, dir, root := fuzzClient(t)
		ctx := context.Background()
		labels := map[string]string{labelKey: labelValue}
		check := func(op string, err error) bool {
			switch status.Code(err) {
			case codes.OK:
				return true
			case codes.InvalidArgument, codes.NotFound, codes.AlreadyExists, codes.FailedPrecondition:
				return false
			case codes.ResourceExhausted:
				// gRPC's own limit on a request's size (4 MiB), met
				// before strata sees the request.
				if strings.Contains(err.Error(), "larger than max") {
					return false
				}
			}
			t.Fatalf("%s: %v", op, err)
			return false
		}
		// A rejected request leaves everything as it was.
		rejected := func(op string, call func() error) bool {
			before := tree(t, dir)
			ok := check(op, call())
			if !ok {
				if after := tree(t, dir); after != before {
					t.Fatalf("rejected %s changed the disk:\nbefore\n%s\nafter\n%s", op, before, after)
				}
			}
			return ok
		}
		var created []string
		if rejected("Prepare", func() error {
			_, err := c.Prepare(ctx, &snapshotsapi.PrepareSnapshotRequest{Key: key, Parent: parent, Labels: labels})
			return err
		}) {
			created = append(created, key)
			if rejected("Commit", func() error {
				_, err := c.Commit(ctx, &snapshotsapi.CommitSnapshotRequest{Key: key, Name: parent + "/c", Labels: labels})
				return err
			}) {
				created = []string{parent + "/c"}
			}
		}
		if rejected("View", func() error {
			_, err := c.View(ctx, &snapshotsapi.ViewSnapshotRequest{Key: key + "/v", Parent: key, Labels: labels})
			return err
		}) {
			created = append([]string{key + "/v"}, created...)
		}
		rejected("Update", func() error {
			_, err := c.Update(ctx, &snapshotsapi.UpdateSnapshotRequest{
				Info:       &snapshotsapi.Info{Name: key, Labels: labels},
				UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{fieldpath}},
			})
			return err
		})
		rejected("List", func() error {
			s, err := c.List(ctx, &snapshotsapi.ListSnapshotsRequest{Filters: []string{filter}})
			for err == nil {
				_, err = s.Recv()
			}
			if err == io.EOF {
				return nil
			}
			return err
		})
		for _, k := range []string{key, parent} {
			rejected("Stat", func() error { _, err := c.Stat(ctx, &snapshotsapi.StatSnapshotRequest{Key: k}); return err })
			rejected("Usage", func() error { _, err := c.Usage(ctx, &snapshotsapi.UsageRequest{Key: k}); return err })
			rejected("Mounts", func() error { _, err := c.Mounts(ctx, &snapshotsapi.MountsRequest{Key: k}); return err })
		}
		for _, k := range created {
			check("Remove", func() error { _, err := c.Remove(ctx, &snapshotsapi.RemoveSnapshotRequest{Key: k}); return err }())
		}
		// Nothing but root/ and the socket ever appears in dir.
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if e.Name() != "root" && e.Name() != "s.sock" {
				t.Fatalf("%s appeared outside the root", filepath.Join(dir, e.Name()))
			}
		}
		if _, err := os.Lstat(root); err != nil {
			t.Fatal(err)
		}
	}
}
