// Package kubernetes holds strata's Kubernetes manifests (the YAML files
// under base/, applied with kubectl apply -k through one of the two node
// modes' kustomizations: deploy/kubernetes or its default-snapshotter
// directory) and decodes them strictly
// into the Kubernetes API's own types: a field the API does not know, a
// duplicate key or a wrong type is an error, not something the API server
// would silently drop. The tests check the manifests hang together; the
// integration tests run the DaemonSet's containers, with its arguments and
// mounts, under a real containerd.
package kubernetes

import (
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"slices"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	nodev1 "k8s.io/api/node/v1"
	k8sjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

//go:embed base/*.yaml default-snapshotter/*.yaml
var embedded embed.FS

// files is the base every variant builds on (deploy/kubernetes for the
// RuntimeClass mode, deploy/kubernetes/default-snapshotter).
var files = func() fs.FS {
	sub, err := fs.Sub(embedded, "base")
	if err != nil {
		panic(err)
	}
	return sub
}()

// Kustomization is the part of kustomize's kustomization.yaml these
// manifests use; anything else in the file is refused.
type Kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace"`
	Resources  []string `json:"resources"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName,omitempty"`
		NewTag  string `json:"newTag,omitempty"`
	} `json:"images"`
}

// Manifests are the decoded objects.
type Manifests struct {
	Kustomization  Kustomization
	Namespace      corev1.Namespace
	ServiceAccount corev1.ServiceAccount
	RuntimeClass   nodev1.RuntimeClass
	DaemonSet      appsv1.DaemonSet
}

// Load decodes kustomization.yaml and every resource it lists, and refuses
// a YAML file it does not list.
func Load() (*Manifests, error) {
	return load(files)
}

func load(fsys fs.FS) (*Manifests, error) {
	var m Manifests
	if err := decodeFile(fsys, "kustomization.yaml", &m.Kustomization); err != nil {
		return nil, err
	}
	if m.Kustomization.Kind != "Kustomization" {
		return nil, fmt.Errorf("kustomization.yaml: kind %q", m.Kustomization.Kind)
	}
	// Each resource file holds one object; its kind says where it goes.
	targets := map[string]any{
		"Namespace":      &m.Namespace,
		"ServiceAccount": &m.ServiceAccount,
		"RuntimeClass":   &m.RuntimeClass,
		"DaemonSet":      &m.DaemonSet,
	}
	for _, name := range m.Kustomization.Resources {
		b, err := fs.ReadFile(fsys, name)
		if err != nil {
			return nil, err
		}
		var meta struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal(b, &meta); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		target, ok := targets[meta.Kind]
		if !ok {
			return nil, fmt.Errorf("%s: kind %q is not one of strata's (or is listed twice)", name, meta.Kind)
		}
		delete(targets, meta.Kind)
		if err := decodeStrict(b, target); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	for kind := range targets {
		return nil, fmt.Errorf("kustomization.yaml lists no %s", kind)
	}
	all, err := fs.Glob(fsys, "*.yaml")
	if err != nil {
		return nil, err
	}
	for _, name := range all {
		if name != "kustomization.yaml" && !slices.Contains(m.Kustomization.Resources, name) {
			return nil, fmt.Errorf("%s is not listed in kustomization.yaml", name)
		}
	}
	return &m, nil
}

func decodeFile(fsys fs.FS, name string, v any) error {
	b, err := fs.ReadFile(fsys, name)
	if err != nil {
		return err
	}
	if err := decodeStrict(b, v); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return nil
}

// decodeStrict decodes YAML into v through JSON as the API server does
// (field names match case-sensitively), refusing unknown fields and
// duplicate keys, which the API server would drop or warn about.
func decodeStrict(b []byte, v any) error {
	j, err := yaml.YAMLToJSONStrict(b)
	if err != nil {
		return err
	}
	strict, err := k8sjson.UnmarshalStrict(j, v)
	if err != nil {
		return err
	}
	return errors.Join(strict...)
}

// Container returns the pod template's container or init container name.
func (m *Manifests) Container(name string) (*corev1.Container, error) {
	spec := &m.DaemonSet.Spec.Template.Spec
	for _, list := range [][]corev1.Container{spec.InitContainers, spec.Containers} {
		for i := range list {
			if list[i].Name == name {
				return &list[i], nil
			}
		}
	}
	return nil, fmt.Errorf("the DaemonSet has no container %q", name)
}

// Volume returns the pod template's volume name.
func (m *Manifests) Volume(name string) (*corev1.Volume, error) {
	for i, v := range m.DaemonSet.Spec.Template.Spec.Volumes {
		if v.Name == name {
			return &m.DaemonSet.Spec.Template.Spec.Volumes[i], nil
		}
	}
	return nil, fmt.Errorf("the DaemonSet has no volume %q", name)
}
