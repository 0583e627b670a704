package containerdproc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/containerd/log"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	cri "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// WaitStartAnswered waits, when process pid runs in a container that
// containerd's CRI plugin started (the DaemonSet's init step, say), until
// CRI reports that container running. CRI records a container as running
// only once the kubelet's StartContainer call is about to be answered:
// restarting containerd before that fails the call (the kubelet reports
// "error reading from server: EOF" on the pod) although the container ran.
// It returns at once when no CRI container holds pid (run by hand, or no
// CRI plugin).
func WaitStartAnswered(ctx context.Context, socket string, pid int) error {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connect to CRI on %s: %w", socket, err)
	}
	defer conn.Close()
	rs := cri.NewRuntimeServiceClient(conn)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		done, err := startAnswered(ctx, rs, pid)
		if err != nil || done {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("CRI did not report this container running: %w", ctx.Err())
		case <-tick.C:
		}
	}
}

// startAnswered reports whether waiting is over: CRI shows a running
// container whose process is pid, or no container it is still starting
// could be pid's.
func startAnswered(ctx context.Context, rs cri.RuntimeServiceClient, pid int) (bool, error) {
	list, err := rs.ListContainers(ctx, &cri.ListContainersRequest{})
	switch status.Code(err) {
	case codes.Unimplemented, codes.Unavailable:
		return true, nil // no CRI plugin, or nothing (gRPC) on the socket
	}
	if err != nil {
		return false, fmt.Errorf("list CRI containers: %w", err)
	}
	starting := false
	for _, c := range list.Containers {
		switch c.State {
		case cri.ContainerState_CONTAINER_CREATED:
			starting = true
		case cri.ContainerState_CONTAINER_RUNNING:
			p, err := containerPID(ctx, rs, c.Id)
			if err != nil {
				return false, err
			}
			if p == pid {
				log.G(ctx).WithField("container", c.Id).Debug("CRI reports this container running")
				return true, nil
			}
		}
	}
	return !starting, nil
}

func containerPID(ctx context.Context, rs cri.RuntimeServiceClient, id string) (int, error) {
	st, err := rs.ContainerStatus(ctx, &cri.ContainerStatusRequest{ContainerId: id, Verbose: true})
	if status.Code(err) == codes.NotFound {
		return 0, nil // gone since the listing
	}
	if err != nil {
		return 0, fmt.Errorf("CRI status of container %s: %w", id, err)
	}
	var info struct {
		Pid int `json:"pid"`
	}
	raw, ok := st.Info["info"]
	if !ok {
		return 0, errors.New("CRI container status carries no info: not containerd's CRI")
	}
	if err := json.Unmarshal([]byte(raw), &info); err != nil {
		return 0, fmt.Errorf("CRI status of container %s: %w", id, err)
	}
	return info.Pid, nil
}
