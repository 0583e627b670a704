// Package accounting works out how the snapshots of a store share their
// layers: what each leaf (a container's writable layer, a view, or an image's
// top layer) stands on, which of those bytes are its alone and which it shares,
// and how much sharing saves the store as a whole. It computes from the sizes
// it is given and reads no disk.
package accounting

import (
	"fmt"
	"sort"
)

// Node is one snapshot: its own layer's size and its parent.
type Node struct {
	Key    string
	Parent string // "" for none
	Kind   string // "active", "view" or "committed"
	// Dir is where the layer is stored. Snapshots with the same Dir are
	// one layer stored once (the same layer committed again through
	// parallel unpack); "" means a directory of its own.
	Dir    string
	Bytes  int64 // the layer's own apparent bytes
	Inodes int64
	// Objects are the shared files' contents its stubs stand for
	// (share_files), by digest: part of Bytes, stored once in the object
	// store whatever layers stand for them.
	Objects map[string]Object
}

// Object is one content of the object store as a layer uses it.
type Object struct {
	Size  int64 // the content's bytes, stored once
	Files int64 // the layer's files (inodes) that stand for it
}

// stubBytes are the bytes of n's files whose content is in the object store.
func (n Node) stubBytes() int64 {
	var b int64
	for _, o := range n.Objects {
		b += o.Size * o.Files
	}
	return b
}

// stored names where n's layer is stored.
func (n Node) stored() string {
	if n.Dir != "" {
		return "dir:" + n.Dir
	}
	return "key:" + n.Key
}

// Leaf is a snapshot nothing stands on, with what its chain weighs.
type Leaf struct {
	Key  string `json:"key"`
	Kind string `json:"kind"`
	// TotalBytes is its own layer and every layer below it.
	TotalBytes int64 `json:"total_bytes"`
	// UniqueBytes are the layers of its chain no other leaf stands on:
	// what removing it and the layers only it uses would free (a content
	// its layers' files hold more than once, shared, counted once).
	UniqueBytes int64 `json:"unique_bytes"`
	// SharedBytes are the layers of its chain other leaves stand on too.
	SharedBytes int64 `json:"shared_bytes"`
	// FileSharedBytes are the files of the layers only it stands on whose
	// content other leaves' layers hold too (share_files): stored once,
	// and not freed with it, so not in UniqueBytes.
	FileSharedBytes int64 `json:"file_shared_bytes"`
	// Layers is the chain's length, itself included.
	Layers int `json:"layers"`
}

// Report is the store's accounting; its JSON form is a stable interface.
type Report struct {
	// LogicalBytes is every leaf's chain summed as if nothing were shared.
	LogicalBytes int64 `json:"logical_bytes"`
	// PhysicalBytes is every layer counted once: what the store holds.
	PhysicalBytes int64 `json:"physical_bytes"`
	// SavedBytes is LogicalBytes - PhysicalBytes: what sharing saves.
	SavedBytes int64 `json:"saved_bytes"`
	// FileSavedBytes is the part of SavedBytes that sharing files saves:
	// the layers' files standing for objects, less the objects.
	FileSavedBytes int64 `json:"file_saved_bytes"`
	// PhysicalInodes is every layer's inodes counted once.
	PhysicalInodes int64  `json:"physical_inodes"`
	Leaves         []Leaf `json:"leaves"`
}

// heldElsewhere reports whether a stored layer outside mine holds an object.
func heldElsewhere(holders, mine map[string]bool) bool {
	for h := range holders {
		if !mine[h] {
			return true
		}
	}
	return false
}

// Compute accounts for a forest of snapshots. Every parent must be among
// nodes.
func Compute(nodes []Node) (Report, error) {
	byKey := make(map[string]Node, len(nodes))
	hasChild := map[string]bool{}
	for _, n := range nodes {
		byKey[n.Key] = n
	}
	for _, n := range nodes {
		if n.Parent == "" {
			continue
		}
		if _, ok := byKey[n.Parent]; !ok {
			return Report{}, fmt.Errorf("snapshot %q has parent %q, which is not in the store", n.Key, n.Parent)
		}
		hasChild[n.Parent] = true
	}

	// Each leaf's chain, how many leaves stand on each stored layer, and
	// which stored layers stand for each object.
	chains := map[string][]string{}
	users := map[string]int{}
	counted := map[string]bool{}
	objects := map[string]int64{}           // digest -> size
	holders := map[string]map[string]bool{} // digest -> stored layers
	var r Report
	for _, n := range nodes {
		if !counted[n.stored()] {
			counted[n.stored()] = true
			r.PhysicalBytes += n.Bytes - n.stubBytes()
			r.PhysicalInodes += n.Inodes
			r.FileSavedBytes += n.stubBytes()
			for d, o := range n.Objects {
				objects[d] = o.Size
				if holders[d] == nil {
					holders[d] = map[string]bool{}
				}
				holders[d][n.stored()] = true
			}
		}
		if hasChild[n.Key] {
			continue
		}
		var chain []string
		for k := n.Key; k != ""; k = byKey[k].Parent {
			if len(chain) > len(nodes) {
				return Report{}, fmt.Errorf("parent chain of %q loops", n.Key)
			}
			chain = append(chain, k)
			users[byKey[k].stored()]++
		}
		chains[n.Key] = chain
	}
	for _, size := range objects {
		r.PhysicalBytes += size
		r.FileSavedBytes -= size
	}
	for key, chain := range chains {
		l := Leaf{Key: key, Kind: byKey[key].Kind, Layers: len(chain)}
		unique := map[string]bool{}
		for _, k := range chain {
			if users[byKey[k].stored()] == 1 {
				unique[byKey[k].stored()] = true
			}
		}
		mine := map[string]bool{} // objects only its own layers hold, counted once
		for _, k := range chain {
			n := byKey[k]
			l.TotalBytes += n.Bytes
			if !unique[n.stored()] {
				l.SharedBytes += n.Bytes
				continue
			}
			l.UniqueBytes += n.Bytes - n.stubBytes()
			for d, o := range n.Objects {
				switch {
				case heldElsewhere(holders[d], unique):
					l.FileSharedBytes += o.Size * o.Files
				case !mine[d]:
					mine[d] = true
					l.UniqueBytes += o.Size
				}
			}
		}
		r.LogicalBytes += l.TotalBytes
		r.Leaves = append(r.Leaves, l)
	}
	sort.Slice(r.Leaves, func(i, j int) bool { return r.Leaves[i].Key < r.Leaves[j].Key })
	r.SavedBytes = r.LogicalBytes - r.PhysicalBytes
	if r.Leaves == nil {
		r.Leaves = []Leaf{}
	}
	return r, nil
}
