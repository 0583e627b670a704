package containerdproc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/log"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// podUIDLabel is the label the kubelet puts on every container of a pod.
const podUIDLabel = "io.kubernetes.pod.uid"

// WaitStartAnswered waits until containerd's CRI plugin reports running the
// container of pod podUID whose process is pid: the DaemonSet's init step,
// which restarts containerd. CRI records a container as running only once
// the kubelet's StartContainer call is about to be answered; restarting
// containerd before that fails the call (the kubelet reports "error reading
// from server: EOF" on the pod) although the container ran. An empty podUID
// (run by hand, not by a kubelet) waits for nothing.
func WaitStartAnswered(ctx context.Context, socket, podUID string, pid int) error {
	if podUID == "" {
		return nil
	}
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connect to CRI on %s: %w", socket, err)
	}
	defer conn.Close()
	rs := cri.NewRuntimeServiceClient(conn)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		id, err := runningAs(ctx, rs, podUID, pid)
		if id != "" {
			log.G(ctx).WithField("container", id).Debug("CRI reports this container running")
			return nil
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("CRI did not report a running container of pod %s with process %d (last error: %v): %w", podUID, pid, last, ctx.Err())
		case <-tick.C:
		}
	}
}

// runningAs returns the ID of pod podUID's running container whose process
// is pid, or "" when CRI shows none yet.
func runningAs(ctx context.Context, rs cri.RuntimeServiceClient, podUID string, pid int) (string, error) {
	list, err := rs.ListContainers(ctx, &cri.ListContainersRequest{Filter: &cri.ContainerFilter{
		State:         &cri.ContainerStateValue{State: cri.ContainerState_CONTAINER_RUNNING},
		LabelSelector: map[string]string{podUIDLabel: podUID},
	}})
	if err != nil {
		return "", fmt.Errorf("list CRI containers: %w", err)
	}
	for _, c := range list.Containers {
		p, err := containerPID(ctx, rs, c.Id)
		if err != nil {
			return "", err
		}
		if p == pid {
			return c.Id, nil
		}
	}
	return "", nil
}

// containerPID reads a container's process from containerd's verbose CRI
// status.
func containerPID(ctx context.Context, rs cri.RuntimeServiceClient, id string) (int, error) {
	st, err := rs.ContainerStatus(ctx, &cri.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if err != nil {
		return 0, fmt.Errorf("CRI status of container %s: %w", id, err)
	}
	raw, ok := st.Info["info"]
	if !ok {
		return 0, errors.New("CRI container status carries no info: not containerd's CRI")
	}
	var info struct {
		Pid int `json:"pid"`
	}
	if err := json.Unmarshal([]byte(raw), &info); err != nil {
		return 0, fmt.Errorf("CRI status of container %s: %w", id, err)
	}
	return info.Pid, nil
}
