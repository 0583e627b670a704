// What a request carries: its key, labels and options, checked before
// anything is recorded, and a snapshot's fields as Walk's filters see them.

package snapshotter

import (
	"fmt"
	"strings"

	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/filters"
	"github.com/containerd/containerd/v2/pkg/labels"
	"github.com/containerd/errdefs"
)

// maxKeyLen bounds keys and names. containerd's own keys are a namespace, a
// number and a digest (under 200 bytes); the bound keeps a hostile key far
// below bbolt's 32 KiB key limit, so it is refused as InvalidArgument rather
// than failing inside the database.
const maxKeyLen = 4096

func validateKey(what, key string) error {
	if key == "" {
		return fmt.Errorf("%s must not be empty: %w", what, errdefs.ErrInvalidArgument)
	}
	if len(key) > maxKeyLen {
		return fmt.Errorf("%s is %d bytes, longer than the %d allowed: %w", what, len(key), maxKeyLen, errdefs.ErrInvalidArgument)
	}
	return nil
}

// validateLabels applies containerd's rule for labels: each key and value
// together at most 4096 bytes.
func validateLabels(l map[string]string) error {
	for k, v := range l {
		if k == "" {
			return fmt.Errorf("label key must not be empty: %w", errdefs.ErrInvalidArgument)
		}
		if err := labels.Validate(k, v); err != nil {
			return err
		}
	}
	return nil
}

// applyOpts collects the options given to Prepare, View or Commit.
func applyOpts(opts []snapshots.Opt) (snapshots.Info, error) {
	var info snapshots.Info
	for _, opt := range opts {
		if err := opt(&info); err != nil {
			return snapshots.Info{}, fmt.Errorf("snapshot option: %w", err)
		}
	}
	if err := validateLabels(info.Labels); err != nil {
		return snapshots.Info{}, err
	}
	return info, nil
}

// adaptInfo exposes a snapshot to containerd's filter language with the
// fields the Snapshotter interface documents for Walk: name, parent, kind and
// labels.KEY.
func adaptInfo(info snapshots.Info) filters.Adaptor {
	return filters.AdapterFunc(func(fieldpath []string) (string, bool) {
		if len(fieldpath) == 0 {
			return "", false
		}
		switch fieldpath[0] {
		case "name":
			return info.Name, true
		case "parent":
			return info.Parent, true
		case "kind":
			switch info.Kind {
			case snapshots.KindActive:
				return "active", true
			case snapshots.KindView:
				return "view", true
			case snapshots.KindCommitted:
				return "committed", true
			}
		case "labels":
			if len(fieldpath) < 2 {
				return "", false
			}
			v, ok := info.Labels[strings.Join(fieldpath[1:], ".")]
			return v, ok
		}
		return "", false
	})
}
