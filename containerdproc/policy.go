package containerdproc

import (
	"context"
	"fmt"
	"os"
	"time"
)

// Plan is the restart a changed config file calls for: of the containerd
// listening on Socket, which reads File.
type Plan struct {
	Socket, File string
	// Running is false when nothing listens on Socket: containerd reads
	// the file when it starts, and nothing is restarted.
	Running bool
	// Refusal, when set, is why this containerd must not be restarted (it
	// reads another file, or nothing would start it again): an error
	// only when a restart is called for.
	Refusal error
	started time.Time
}

// PlanRestart finds the containerd on socket and checks, before the file is
// touched, that restarting it would do what it is for: that it reads file,
// and that something starts it again once it stops (else Refusal says why).
func PlanRestart(ctx context.Context, socket, file string) (Plan, error) {
	plan := Plan{Socket: socket, File: file}
	p, running, err := Find(ctx, socket)
	if err != nil || !running {
		return plan, err
	}
	if plan.started, err = StartTime(p.PID); err != nil {
		return plan, err
	}
	plan.Running = true
	if plan.Refusal = p.Reads(file); plan.Refusal == nil {
		plan.Refusal = p.Supervised()
	}
	return plan, nil
}

// Why says why containerd must restart, or "" when it need not: the file
// changed, or a run cut off between writing the file and restarting
// containerd (killed, or timed out waiting) left a containerd that started
// before the file's last change and never read it. A second's margin covers
// the clocks' resolution; after a restart containerd starts well after the
// write.
func (p Plan) Why(changed bool) (string, error) {
	switch {
	case !p.Running:
		return "", nil
	case changed:
		return "the config changed", nil
	}
	fi, err := os.Stat(p.File)
	if err != nil {
		return "", err
	}
	if !p.started.Before(fi.ModTime().Add(-time.Second)) {
		return "", nil
	}
	return fmt.Sprintf("containerd started %s, before the config's last change at %s",
		p.started.UTC().Format(time.RFC3339), fi.ModTime().UTC().Format(time.RFC3339)), nil
}
