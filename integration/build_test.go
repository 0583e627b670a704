package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startBuildkit runs buildkitd with its containerd worker on this node's
// containerd and strata as the worker's snapshotter.
func (e *Env) startBuildkit() string {
	e.t.Helper()
	sock := filepath.Join(e.Dir, "buildkitd.sock")
	cfg := filepath.Join(e.Dir, "buildkitd.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf("[registry.%q]\n  http = true\n", registry)), 0o600); err != nil {
		e.t.Fatal(err)
	}
	e.Buildkit = startProc(e.t, e.Dir, "buildkitd", filepath.Join(toolsBin, "buildkitd"),
		"--config", cfg, "--root", filepath.Join(e.Dir, "buildkit"), "--addr", "unix://"+sock,
		"--oci-worker=false", "--containerd-worker=true", "--containerd-worker-addr", e.Sock,
		"--containerd-worker-snapshotter", "strata", "--containerd-worker-net", "host")
	e.Buildkit.waitLog(e.t, "running server on", time.Minute)
	return "unix://" + sock
}

// TestNerdctlBuild: nerdctl builds with BuildKit on strata, FROM an image in
// the registry, with RUN and COPY steps; a rebuild comes from the cache; the
// built image runs. With share_files off and on: a RUN step changes the
// metadata of a shared file (overlayfs then copies up its metadata alone,
// into the layer BuildKit commits) and copies it.
func TestNerdctlBuild(t *testing.T) {
	for _, config := range []string{"", shareFilesConfig} {
		t.Run("share_files="+fmt.Sprint(config != ""), func(t *testing.T) {
			nerdctlBuild(t, newEnv(t, EnvOptions{StrataConfig: config}))
		})
	}
}

func nerdctlBuild(t *testing.T, e *Env) {
	host := e.startBuildkit()
	ctx := filepath.Join(e.Dir, "context")
	if err := os.MkdirAll(ctx, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"hello.txt": "hello from COPY\n",
		"Dockerfile": fmt.Sprintf(`FROM %s
RUN echo built by RUN > /built && rm /lower-file && chmod 0700 /bin/busybox && cp /bin/busybox /busybox-copy
COPY hello.txt /hello.txt
CMD ["/bin/sh", "-c", "cat /built /hello.txt /l3; test -e /lower-file && echo present || echo gone; busybox cmp /bin/busybox /busybox-copy && busybox stat -c %%a /bin/busybox"]
`, imgThreeLayers),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(ctx, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	image := registry + "/built:latest"
	// BuildKit reports its steps on standard error.
	build := func() string {
		t.Helper()
		out, err := e.combined(e.nerdctlArgs("build", "--buildkit-host", host, "--progress", "plain", "-t", image, ctx)...)
		if err != nil {
			t.Fatalf("nerdctl build: %v\n%s", err, out)
		}
		return out
	}
	first := build()
	for _, step := range []string{"RUN echo built by RUN", "COPY hello.txt"} {
		if cachedStep(first, step) {
			t.Fatalf("first build took %q from a cache it cannot have:\n%s", step, first)
		}
	}
	// The rebuild: every step from the cache.
	again := build()
	for _, step := range []string{"RUN echo built by RUN", "COPY hello.txt"} {
		if !cachedStep(again, step) {
			t.Errorf("rebuild did not take %q from the cache:\n%s", step, again)
		}
	}
	got := e.nerdctl("run", "--rm", "--net", "none", image)
	if want := "built by RUN\nhello from COPY\nlayer 3\ngone\n700\n"; got != want {
		t.Fatalf("built image printed %q, want %q", got, want)
	}
}

// cachedStep reports whether BuildKit's plain progress marks step CACHED:
// the step's "#N [..] STEP" line and a "#N CACHED" line share the number.
func cachedStep(progress, step string) bool {
	for _, line := range strings.Split(progress, "\n") {
		if strings.Contains(line, step) && strings.HasPrefix(line, "#") {
			id := strings.Fields(line)[0]
			if strings.Contains(progress, "\n"+id+" CACHED") {
				return true
			}
		}
	}
	return false
}
