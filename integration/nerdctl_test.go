package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// TestNerdctlLayerWorkflow is the image-layer workflow Docker users know:
// run a 3-layer image and see every layer; write a file and delete one of a
// lower layer (hidden in the container, untouched in the layer); commit the
// container to an image with one more layer; push, remove, pull back, run.
// With share_files off and on.
func TestNerdctlLayerWorkflow(t *testing.T) {
	for _, config := range []string{"", shareFilesConfig} {
		t.Run("share_files="+fmt.Sprint(config != ""), func(t *testing.T) {
			nerdctlLayerWorkflow(t, newEnv(t, EnvOptions{StrataConfig: config}))
		})
	}
}

func nerdctlLayerWorkflow(t *testing.T, e *Env) {
	e.nerdctl("pull", "--insecure-registry", imgThreeLayers)
	e.nerdctl("run", "-d", "--name", "c2", "--net", "none", imgThreeLayers, "sleep", "3600")

	if out := e.nerdctl("exec", "c2", "cat", "/l2", "/l3", "/lower-file"); out != "layer 2\nlayer 3\nfrom layer 2\n" {
		t.Fatalf("container sees %q", out)
	}
	e.nerdctl("exec", "c2", "sh", "-c", "echo added > /added && rm /lower-file")
	if out, err := e.try(e.nerdctlArgs("exec", "c2", "cat", "/lower-file")...); err == nil {
		t.Fatalf("deleted file still visible in the container: %q", out)
	}
	// The lower layer itself still holds the file; the container's upper
	// directory holds overlay's whiteout for it.
	holders, _ := filepath.Glob(filepath.Join(layersDir(e.StrataRoot), "*", "lower-file"))
	var regular, whiteouts int
	for _, h := range holders {
		fi, err := os.Lstat(h)
		if err != nil {
			t.Fatal(err)
		}
		switch {
		case fi.Mode().IsRegular():
			regular++
			if b, err := os.ReadFile(h); err != nil || string(b) != "from layer 2\n" {
				t.Fatalf("lower layer's file changed: %q, %v", b, err)
			}
		case fi.Mode()&os.ModeCharDevice != 0:
			whiteouts++
		}
	}
	if regular != 1 || whiteouts != 1 {
		t.Fatalf("lower-file: %d regular files and %d whiteouts in layer directories, want 1 and 1: %v", regular, whiteouts, holders)
	}

	committed := registry + "/committed:latest"
	e.nerdctl("commit", "c2", committed)
	var inspect []struct {
		RootFS struct{ Layers []string }
	}
	if err := json.Unmarshal([]byte(e.nerdctl("image", "inspect", committed)), &inspect); err != nil {
		t.Fatal(err)
	}
	if len(inspect) != 1 || len(inspect[0].RootFS.Layers) != 4 {
		t.Fatalf("committed image has layers %+v, want 4", inspect)
	}
	e.nerdctl("push", "--insecure-registry", committed)
	e.nerdctl("rm", "-f", "c2")
	e.nerdctl("rmi", committed, imgThreeLayers)

	e.nerdctl("pull", "--insecure-registry", committed)
	out := e.nerdctl("run", "--rm", "--net", "none", committed, "sh", "-c", "cat /added /l3; test -e /lower-file && echo present || echo gone")
	if out != "added\nlayer 3\ngone\n" {
		t.Fatalf("pulled-back image shows %q, want the added file and the deletion", out)
	}
}
