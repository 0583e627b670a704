// Package admin is strata's operator endpoint: a small JSON API over HTTP on
// a root-only unix socket, beside the Snapshots gRPC socket, and the client
// the strata-snapshotter subcommands (ls, tree, inspect, du) use.
//
// The API (all GET, all JSON; errors are {"error": "..."} with a 4xx/5xx):
//
//	/v1/snapshots[?namespace=NS]        every snapshot (NS's and what they stand on)
//	/v1/snapshot?key=NAME[&namespace=NS] one Snapshot, by its key or by the name
//	                                     containerd users know; 400 without key,
//	                                     404 none, 409 a name in several namespaces
//	/v1/du[?namespace=NS]               the accounting.Report of the store (NS's leaves)
//
// Try it with: curl --unix-socket /run/strata/strata.admin.sock http://strata/v1/du
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/errdefs"
	"github.com/containerd/log"

	"github.com/strata-snapshotter/strata/accounting"
	"github.com/strata-snapshotter/strata/snapshotter"
)

// Snapshot is one snapshot as the API shows it.
type Snapshot struct {
	// Key is the snapshot's key as strata has it. containerd's keys are
	// NAMESPACE/ID/NAME: Namespace and Name are its parts, Name being what
	// ctr snapshots, nerdctl and crictl show (a container's ID, an image
	// layer's chain ID).
	Key       string            `json:"key"`
	Namespace string            `json:"namespace,omitempty"`
	Name      string            `json:"name"`
	Kind      string            `json:"kind"` // active, view or committed
	Parent    string            `json:"parent,omitempty"`
	Created   time.Time         `json:"created"`
	Updated   time.Time         `json:"updated"`
	Labels    map[string]string `json:"labels,omitempty"`
	Usage     Usage             `json:"usage"`
	Leaf      bool              `json:"leaf"` // nothing stands on it
	Children  []string          `json:"children,omitempty"`
	// GraphDriver names the directories as Docker's inspect does.
	GraphDriver GraphDriver `json:"graph_driver"`
	// Mounts are what strata returns for an active snapshot or a view.
	Mounts []Mount `json:"mounts,omitempty"`
	// IDMapping is the user namespace the snapshot was made for.
	IDMapping *IDMapping `json:"id_mapping,omitempty"`
}

// IDMapping is a user namespace's ID ranges, each containerID:hostID:size,
// comma-separated, as containerd's mapping labels give them.
type IDMapping struct {
	UIDs string `json:"uids"`
	GIDs string `json:"gids"`
}

// Mount is one mount as containerd's Mounts call returns it.
type Mount struct {
	Type    string   `json:"type"`
	Source  string   `json:"source"`
	Target  string   `json:"target,omitempty"`
	Options []string `json:"options,omitempty"`
}

// Usage is a layer's own usage.
type Usage struct {
	// Bytes is the apparent size of its files (du --apparent-size).
	Bytes int64 `json:"bytes"`
	// AllocatedBytes is what its files and directories take on disk:
	// containerd's Usage.Size, the SIZE ctr snapshots usage shows.
	AllocatedBytes int64 `json:"allocated_bytes"`
	Inodes         int64 `json:"inodes"`
}

// SplitKey splits a key containerd's metadata store made, NAMESPACE/ID/NAME,
// into the namespace and the name; ok is false for any other key.
func SplitKey(key string) (namespace, name string, ok bool) {
	ns, rest, ok1 := strings.Cut(key, "/")
	id, name, ok2 := strings.Cut(rest, "/")
	if !ok1 || !ok2 || ns == "" || id == "" || name == "" || strings.Trim(id, "0123456789") != "" {
		return "", key, false
	}
	return ns, name, true
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
	// Details describes every snapshot, active ones measured.
	Details(ctx context.Context) ([]snapshotter.Detail, error)
	// Index describes every snapshot from the index alone.
	Index(ctx context.Context) ([]snapshotter.Detail, error)
	// Detail describes one snapshot, measured.
	Detail(ctx context.Context, key string) (snapshotter.Detail, error)
}

// Handler serves the API for src.
func Handler(src Source) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/snapshots", func(w http.ResponseWriter, r *http.Request) {
		details, err := src.Details(r.Context())
		if err != nil {
			reply(w, r, nil, err)
			return
		}
		reply(w, r, list(details, r.URL.Query().Get("namespace")), nil)
	})
	mux.HandleFunc("GET /v1/snapshot", func(w http.ResponseWriter, r *http.Request) {
		key, namespace := r.URL.Query().Get("key"), r.URL.Query().Get("namespace")
		if key == "" {
			replyError(w, r, http.StatusBadRequest, "key is required: /v1/snapshot?key=KEY")
			return
		}
		// Names, parents and children from the index; only the one
		// snapshot found is measured.
		index, err := src.Index(r.Context())
		if err != nil {
			reply(w, r, nil, err)
			return
		}
		s, code, msg := find(list(index, ""), namespace, key)
		if code != http.StatusOK {
			replyError(w, r, code, msg)
			return
		}
		d, err := src.Detail(r.Context(), s.Key)
		if errdefs.IsNotFound(err) { // removed since the index was read
			replyError(w, r, http.StatusNotFound, "no such snapshot: "+key)
			return
		}
		if err != nil {
			reply(w, r, nil, err)
			return
		}
		s.Usage = usage(d)
		reply(w, r, s, nil)
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
			for dg, u := range d.Objects {
				if nodes[i].Objects == nil {
					nodes[i].Objects = map[string]accounting.Object{}
				}
				nodes[i].Objects[dg.String()] = accounting.Object{Size: u.Size, Files: u.Files}
			}
		}
		// Unique and shared are the whole store's (a layer another
		// namespace uses too is shared); a namespace selects the leaves.
		report, err := accounting.Compute(nodes)
		if namespace := r.URL.Query().Get("namespace"); namespace != "" {
			leaves := report.Leaves[:0]
			for _, l := range report.Leaves {
				if ns, _, _ := SplitKey(l.Key); ns == namespace {
					leaves = append(leaves, l)
				}
			}
			report.Leaves = leaves
		}
		reply(w, r, report, err)
	})
	return mux
}

// find picks the snapshot a user means: the one with that key, else the
// one with that name among the namespace's (all snapshots when namespace
// is empty), if exactly one has it.
func find(all []Snapshot, namespace, key string) (Snapshot, int, string) {
	var named []Snapshot
	for _, s := range selectNamespace(all, namespace) {
		if s.Key == key {
			return s, http.StatusOK, ""
		}
		if s.Name == key {
			named = append(named, s)
		}
	}
	switch len(named) {
	case 1:
		return named[0], http.StatusOK, ""
	case 0:
		if elsewhere := keysNamed(all, key); namespace != "" && len(elsewhere) > 0 {
			return Snapshot{}, http.StatusNotFound, fmt.Sprintf("no such snapshot: %s in namespace %s or under its snapshots; strata has %s (containerd stores a layer pulled into several namespaces once, under the key of the namespace that pulled it first)",
				key, namespace, strings.Join(elsewhere, ", "))
		}
		return Snapshot{}, http.StatusNotFound, "no such snapshot: " + key
	}
	return Snapshot{}, http.StatusConflict, fmt.Sprintf("%q names a snapshot in several namespaces (%s): give its namespace (-n NAMESPACE) or its key",
		key, strings.Join(keysNamed(named, key), ", "))
}

func keysNamed(snaps []Snapshot, name string) []string {
	var keys []string
	for _, s := range snaps {
		if s.Name == name || s.Key == name {
			keys = append(keys, s.Key)
		}
	}
	return keys
}

// selectNamespace returns the snapshots containerd made in namespace (their
// keys carry it) and the layers they stand on. Those may carry another
// namespace: containerd stores a layer pulled into several namespaces once,
// under the key of the namespace that pulled it first. All snapshots when
// namespace is empty.
func selectNamespace(all []Snapshot, namespace string) []Snapshot {
	if namespace == "" {
		return all
	}
	byKey := make(map[string]Snapshot, len(all))
	for _, s := range all {
		byKey[s.Key] = s
	}
	in := map[string]bool{}
	for _, s := range all {
		if s.Namespace != namespace {
			continue
		}
		for k := s.Key; k != "" && !in[k]; k = byKey[k].Parent {
			in[k] = true
		}
	}
	var selected []Snapshot
	for _, s := range all {
		if in[s.Key] {
			selected = append(selected, s)
		}
	}
	return selected
}

func kind(d snapshotter.Detail) string { return strings.ToLower(d.Kind.String()) }

// list turns the snapshotter's details into the API's objects, sorted by
// key, with children and leaves worked out, selecting namespace's.
func list(details []snapshotter.Detail, namespace string) []Snapshot {
	children := map[string][]string{}
	for _, d := range details {
		if d.Parent != "" {
			children[d.Parent] = append(children[d.Parent], d.Name)
		}
	}
	snaps := make([]Snapshot, 0, len(details))
	for _, d := range details {
		ns, name, _ := SplitKey(d.Name)
		s := Snapshot{
			Key:       d.Name,
			Namespace: ns,
			Name:      name,
			Kind:      kind(d),
			Parent:    d.Parent,
			Created:   d.Created,
			Updated:   d.Updated,
			Labels:    d.Labels,
			Usage:     usage(d),
			Leaf:      len(children[d.Name]) == 0,
			Children:  children[d.Name],
		}
		for _, m := range d.Mounts {
			s.Mounts = append(s.Mounts, Mount{Type: m.Type, Source: m.Source, Target: m.Target, Options: m.Options})
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
	return selectNamespace(snaps, namespace)
}

func usage(d snapshotter.Detail) Usage {
	return Usage{Bytes: d.Usage.Bytes, AllocatedBytes: d.Usage.Size, Inodes: d.Usage.Inodes}
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

// ErrNotFound is returned by the client for an unknown key or name.
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

func (c *Client) get(ctx context.Context, path string, query url.Values, v any) error {
	for k, vs := range query {
		if len(vs) == 1 && vs[0] == "" {
			delete(query, k)
		}
	}
	u := "http://strata" + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	var uerr *url.Error
	if errors.As(err, &uerr) {
		err = uerr.Err // the dial's error, without the request's URL
	}
	switch {
	case errors.Is(err, syscall.EACCES):
		return fmt.Errorf("strata's admin socket %s is root's only: run as root: %w", c.address, err)
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Errorf("no strata daemon answers on its admin socket %s (is strata-snapshotter running, with this config or --address?): %w", c.address, err)
	case err != nil:
		return fmt.Errorf("ask strata's admin socket %s: %w", c.address, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var e struct{ Error string }
		if json.Unmarshal(body, &e) != nil || e.Error == "" {
			// Not the API's error: an older daemon without this path,
			// or something else on the socket.
			return fmt.Errorf("strata's admin socket %s answered %s: %s", c.address, resp.Status, strings.TrimSpace(string(body)))
		}
		switch {
		case resp.StatusCode == http.StatusNotFound:
			return fmt.Errorf("%w: %s", ErrNotFound, strings.TrimPrefix(e.Error, ErrNotFound.Error()+": "))
		case resp.StatusCode < 500:
			return errors.New(e.Error)
		}
		return fmt.Errorf("strata failed: %s (HTTP %d)", e.Error, resp.StatusCode)
	}
	return json.NewDecoder(resp.Body).Decode(v)
}

// Snapshots lists every snapshot, or a containerd namespace's.
func (c *Client) Snapshots(ctx context.Context, namespace string) ([]Snapshot, error) {
	var s []Snapshot
	return s, c.get(ctx, "/v1/snapshots", url.Values{"namespace": {namespace}}, &s)
}

// Snapshot describes one snapshot, found by its key or its name (in
// namespace, when one is given); ErrNotFound when none matches.
func (c *Client) Snapshot(ctx context.Context, namespace, key string) (Snapshot, error) {
	var s Snapshot
	return s, c.get(ctx, "/v1/snapshot", url.Values{"key": {key}, "namespace": {namespace}}, &s)
}

// DiskUsage is the accounting of the store, or of a containerd namespace's
// snapshots.
func (c *Client) DiskUsage(ctx context.Context, namespace string) (accounting.Report, error) {
	var r accounting.Report
	return r, c.get(ctx, "/v1/du", url.Values{"namespace": {namespace}}, &r)
}
