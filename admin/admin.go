// Package admin is strata's operator endpoint: a small JSON API over HTTP on
// a root-only unix socket, beside the Snapshots gRPC socket, and the client
// the strata-snapshotter subcommands (ls, tree, inspect, du) use.
//
// The API (all GET, all JSON; errors are {"error": "..."} with a 4xx/5xx):
//
//	/v1/snapshots              every snapshot, as Snapshot objects
//	/v1/snapshot?key=KEY       one Snapshot; 404 "no such snapshot: KEY"
//	/v1/du                     the accounting.Report of the store
//
// Try it with: curl --unix-socket /run/strata/strata.admin.sock http://strata/v1/du
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/containerd/containerd/v2/core/mount"
	"github.com/containerd/log"

	"github.com/strata-snapshotter/strata/accounting"
	"github.com/strata-snapshotter/strata/snapshotter"
)

// Snapshot is one snapshot as the API shows it.
type Snapshot struct {
	Key      string            `json:"key"`
	Kind     string            `json:"kind"` // active, view or committed
	Parent   string            `json:"parent,omitempty"`
	Created  time.Time         `json:"created"`
	Updated  time.Time         `json:"updated"`
	Labels   map[string]string `json:"labels,omitempty"`
	Usage    Usage             `json:"usage"`
	Leaf     bool              `json:"leaf"` // nothing stands on it
	Children []string          `json:"children,omitempty"`
	// GraphDriver names the directories as Docker's inspect does.
	GraphDriver GraphDriver `json:"graph_driver"`
	// Mounts are what strata returns for an active snapshot or a view.
	Mounts []mount.Mount `json:"mounts,omitempty"`
	// IDMapping is the user namespace the snapshot was made for.
	IDMapping *IDMapping `json:"id_mapping,omitempty"`
}

// IDMapping is a user namespace's ID ranges, each containerID:hostID:size,
// comma-separated, as containerd's mapping labels give them.
type IDMapping struct {
	UIDs string `json:"uids"`
	GIDs string `json:"gids"`
}

// Usage is a layer's own usage.
type Usage struct {
	Bytes  int64 `json:"bytes"`  // apparent size of its files
	Size   int64 `json:"size"`   // allocated, as containerd's Usage reports it
	Inodes int64 `json:"inodes"` // inodes
}

// GraphDriver holds the directories under the names Docker users know.
type GraphDriver struct {
	Name string `json:"name"` // "strata"
	Data struct {
		// LowerDir lists the layers below, colon-separated, in the order
		// of the overlay mount's lowerdir= (nearest first).
		LowerDir string `json:"LowerDir,omitempty"`
		// UpperDir holds the snapshot's own files (for a committed
		// snapshot or a view, its layer directory).
		UpperDir string `json:"UpperDir"`
		WorkDir  string `json:"WorkDir,omitempty"`
	} `json:"data"`
}

// Source is what the server reports on: the running snapshotter.
type Source interface {
	Details(ctx context.Context) ([]snapshotter.Detail, error)
}

// Handler serves the API for src.
func Handler(src Source) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/snapshots", func(w http.ResponseWriter, r *http.Request) {
		snaps, err := list(r.Context(), src)
		reply(w, r, snaps, err)
	})
	mux.HandleFunc("GET /v1/snapshot", func(w http.ResponseWriter, r *http.Request) {
		key := r.URL.Query().Get("key")
		snaps, err := list(r.Context(), src)
		if err != nil {
			reply(w, r, nil, err)
			return
		}
		for _, s := range snaps {
			if s.Key == key {
				reply(w, r, s, nil)
				return
			}
		}
		replyError(w, r, http.StatusNotFound, "no such snapshot: "+key)
	})
	mux.HandleFunc("GET /v1/du", func(w http.ResponseWriter, r *http.Request) {
		details, err := src.Details(r.Context())
		if err != nil {
			reply(w, r, nil, err)
			return
		}
		nodes := make([]accounting.Node, len(details))
		for i, d := range details {
			nodes[i] = accounting.Node{Key: d.Name, Parent: d.Parent, Kind: kind(d), Dir: d.Dir, Bytes: d.Usage.Bytes, Inodes: d.Usage.Inodes}
		}
		report, err := accounting.Compute(nodes)
		reply(w, r, report, err)
	})
	return mux
}

func kind(d snapshotter.Detail) string { return strings.ToLower(d.Kind.String()) }

// list turns the snapshotter's details into the API's objects, sorted by
// key, with children and leaves worked out.
func list(ctx context.Context, src Source) ([]Snapshot, error) {
	details, err := src.Details(ctx)
	if err != nil {
		return nil, err
	}
	children := map[string][]string{}
	for _, d := range details {
		if d.Parent != "" {
			children[d.Parent] = append(children[d.Parent], d.Name)
		}
	}
	snaps := make([]Snapshot, 0, len(details))
	for _, d := range details {
		s := Snapshot{
			Key:      d.Name,
			Kind:     kind(d),
			Parent:   d.Parent,
			Created:  d.Created,
			Updated:  d.Updated,
			Labels:   d.Labels,
			Usage:    Usage{Bytes: d.Usage.Bytes, Size: d.Usage.Size, Inodes: d.Usage.Inodes},
			Leaf:     len(children[d.Name]) == 0,
			Children: children[d.Name],
			Mounts:   d.Mounts,
		}
		sort.Strings(s.Children)
		if d.UIDMapping != "" {
			s.IDMapping = &IDMapping{UIDs: d.UIDMapping, GIDs: d.GIDMapping}
		}
		s.GraphDriver.Name = "strata"
		s.GraphDriver.Data.LowerDir = strings.Join(d.LowerDirs, ":")
		s.GraphDriver.Data.UpperDir = d.Dir
		s.GraphDriver.Data.WorkDir = d.WorkDir
		snaps = append(snaps, s)
	}
	sort.Slice(snaps, func(i, j int) bool { return snaps[i].Key < snaps[j].Key })
	return snaps, nil
}

func reply(w http.ResponseWriter, r *http.Request, v any, err error) {
	if err != nil {
		log.G(r.Context()).WithError(err).WithField("path", r.URL.Path).Error("admin request failed")
		replyError(w, r, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		log.G(r.Context()).WithError(err).Warn("admin reply not sent")
	}
}

func replyError(w http.ResponseWriter, _ *http.Request, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// ErrNotFound is returned by the client for an unknown key.
var ErrNotFound = errors.New("no such snapshot")

// Client talks to a running daemon's admin socket.
type Client struct {
	address string
	http    *http.Client
}

// NewClient returns a client for the admin socket at address.
func NewClient(address string) *Client {
	return &Client{
		address: address,
		http: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", address)
			},
		}},
	}
}

func (c *Client) get(ctx context.Context, path string, v any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://strata"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach strata's admin socket %s (is strata-snapshotter running?): %w", c.address, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		var e struct{ Error string }
		json.NewDecoder(resp.Body).Decode(&e)
		if resp.StatusCode == http.StatusNotFound {
			return fmt.Errorf("%w: %s", ErrNotFound, strings.TrimPrefix(e.Error, ErrNotFound.Error()+": "))
		}
		return fmt.Errorf("strata: %s (HTTP %d)", e.Error, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// Snapshots lists every snapshot.
func (c *Client) Snapshots(ctx context.Context) ([]Snapshot, error) {
	var s []Snapshot
	return s, c.get(ctx, "/v1/snapshots", &s)
}

// Snapshot describes one snapshot; ErrNotFound for an unknown key.
func (c *Client) Snapshot(ctx context.Context, key string) (Snapshot, error) {
	var s Snapshot
	return s, c.get(ctx, "/v1/snapshot?key="+url.QueryEscape(key), &s)
}

// DiskUsage is the store's accounting.
func (c *Client) DiskUsage(ctx context.Context) (accounting.Report, error) {
	var r accounting.Report
	return r, c.get(ctx, "/v1/du", &r)
}
