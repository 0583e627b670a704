package containerdproc

import (
	"context"
	"fmt"
	"os"
	"time"
)

// Plan is the restart a config file's change calls for, of the containerd
// listening on Socket.
type Plan struct {
	Socket string
	// Running is false when nothing listens on Socket: containerd reads
	// the file when it starts, and nothing is restarted.
	Running bool
	// Reason says why containerd must restart; "" when it need not.
	Reason string
}

// PlanRestart decides, before file is touched, whether the containerd on
// socket must restart to read it: when the file changed, or when a run cut
// off between writing the file and restarting containerd (killed, or timed
// out waiting) left a containerd that started before the file's last change
// and never read it. A second's margin covers the clocks' resolution; after
// a restart containerd starts well after the write. When a restart is called
// for but would not do what it is for (that containerd reads another file,
// or nothing starts it again once it stops), PlanRestart refuses.
func PlanRestart(ctx context.Context, socket, file string, changed bool) (Plan, error) {
	plan := Plan{Socket: socket}
	p, running, err := Find(ctx, socket)
	if err != nil || !running {
		return plan, err
	}
	plan.Running = true
	started, err := StartTime(p.PID)
	if err != nil {
		return plan, err
	}
	if changed {
		plan.Reason = "the config changed"
	} else {
		fi, err := os.Stat(file)
		if err != nil {
			return plan, err
		}
		if !started.Before(fi.ModTime().Add(-time.Second)) {
			return plan, nil
		}
		plan.Reason = fmt.Sprintf("containerd started %s, before the config's last change at %s",
			started.UTC().Format(time.RFC3339), fi.ModTime().UTC().Format(time.RFC3339))
	}
	if err := p.Reads(file); err != nil {
		return plan, err
	}
	return plan, p.Supervised()
}
