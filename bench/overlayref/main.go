// Command overlayref serves containerd's own overlay snapshotter
// (plugins/snapshots/overlay) over the Snapshots gRPC API through
// contrib/snapshotservice, the path strata's API is served on: the
// reference strata's benchmarks compare against, with containerd's plugin
// defaults (asynchronous remove, idmapped mounts where the kernel does
// them).
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay"
	"github.com/containerd/containerd/v2/plugins/snapshots/overlay/overlayutils"
	"google.golang.org/grpc"
)

func main() {
	root := flag.String("root", "", "directory holding the snapshots")
	address := flag.String("address", "", "unix socket to serve on")
	flag.Parse()
	if err := serve(*root, *address); err != nil {
		fmt.Fprintln(os.Stderr, "overlayref:", err)
		os.Exit(1)
	}
}

func serve(root, address string) error {
	if root == "" || address == "" {
		return fmt.Errorf("--root and --address are required")
	}
	opts := []overlay.Opt{overlay.AsynchronousRemove}
	if ok, _ := overlayutils.SupportsIDMappedMounts(); ok {
		opts = append(opts, overlay.WithRemapIDs)
	}
	sn, err := overlay.NewSnapshotter(root, opts...)
	if err != nil {
		return err
	}
	defer sn.Close()
	l, err := net.Listen("unix", address)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		<-ctx.Done()
		srv.GracefulStop()
	}()
	fmt.Println("overlayref serving")
	return srv.Serve(l)
}
