package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	"google.golang.org/grpc"

	"github.com/strata-snapshotter/strata/admin"
	"github.com/strata-snapshotter/strata/snapshotter"
)

// serve runs the daemon until SIGINT or SIGTERM: it opens the snapshotter,
// serves it on cfg.Address, and on a signal stops accepting, lets in-flight
// calls finish for up to cfg.ShutdownTimeout, and closes the index.
func serve(ctx context.Context, cfg Config) error {
	// Subscribe before anything slow, so a signal during start-up is not
	// lost to the default handler.
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(signals)

	var opts []snapshotter.Opt
	if cfg.SyncRemove {
		opts = append(opts, snapshotter.WithSyncRemove)
	}
	if !cfg.SyncOnCommit {
		opts = append(opts, snapshotter.WithoutCommitSync)
	}
	if len(cfg.MountOptions) > 0 {
		opts = append(opts, snapshotter.WithMountOptions(cfg.MountOptions))
	}
	// Claim the socket before opening the store, so a second daemon aimed
	// at a live one is refused without touching its root.
	l, err := listen(cfg.Address)
	if err != nil {
		return err
	}
	adminL, err := listen(cfg.AdminAddress)
	if err != nil {
		l.Close()
		return err
	}
	sn, err := snapshotter.New(ctx, cfg.Root, opts...)
	if err != nil {
		l.Close()
		adminL.Close()
		return fmt.Errorf("open snapshotter at %s: %w", cfg.Root, err)
	}
	defer func() {
		if err := sn.Close(); err != nil {
			log.G(ctx).WithError(err).Error("failed to close snapshotter")
		}
	}()

	srv := newGRPCServer(sn)

	adminSrv := &http.Server{Handler: admin.Handler(sn), ReadHeaderTimeout: 10 * time.Second}

	served := make(chan error, 2)
	go func() { served <- srv.Serve(l) }()
	go func() {
		if err := adminSrv.Serve(adminL); !errors.Is(err, http.ErrServerClosed) {
			served <- fmt.Errorf("admin: %w", err)
		}
	}()
	log.G(ctx).WithField("address", cfg.Address).WithField("admin_address", cfg.AdminAddress).
		WithField("root", cfg.Root).WithField("version", buildVersion()).Info("strata-snapshotter serving")

	select {
	case err := <-served:
		return fmt.Errorf("serve %s: %w", cfg.Address, err)
	case sig := <-signals:
		log.G(ctx).WithField("signal", sig.String()).Info("shutting down")
	}
	deadline, cancel := context.WithTimeout(ctx, cfg.ShutdownTimeout.Duration)
	defer cancel()
	stopped := make(chan struct{})
	go func() {
		srv.GracefulStop()
		close(stopped)
	}()
	adminStopped := make(chan error, 1)
	go func() { adminStopped <- adminSrv.Shutdown(deadline) }()
	select {
	case <-stopped:
	case <-deadline.Done():
		log.G(ctx).WithField("timeout", cfg.ShutdownTimeout.String()).Warn("in-flight calls did not finish in time; cancelling them")
		srv.Stop()
		<-stopped
	}
	if err := <-adminStopped; err != nil {
		adminSrv.Close()
	}
	return nil
}

// newGRPCServer serves containerd's Snapshots API for sn.
func newGRPCServer(sn snapshots.Snapshotter) *grpc.Server {
	srv := grpc.NewServer(grpc.StreamInterceptor(streamErrorsToGRPC))
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	return srv
}

// streamErrorsToGRPC gives streaming calls the error codes unary calls get:
// snapshotservice's List returns the snapshotter's Walk error unconverted,
// so a bad filter would otherwise reach clients as Unknown instead of
// InvalidArgument.
func streamErrorsToGRPC(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return errgrpc.ToGRPC(handler(srv, ss))
}

// listen creates the socket at address: its directory 0700, the socket 0600.
// A live server on the address, or a path that is not a socket, is refused;
// a stale socket nobody answers on is replaced.
func listen(address string) (net.Listener, error) {
	dir := filepath.Dir(address)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create socket directory: %w", err)
	}
	fi, err := os.Lstat(address)
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("check socket path: %w", err)
	case fi.Mode().Type() != os.ModeSocket:
		return nil, fmt.Errorf("%s exists and is not a socket (%v); refusing to replace it", address, fi.Mode().Type())
	default:
		conn, err := net.DialTimeout("unix", address, time.Second)
		if err == nil {
			conn.Close()
			return nil, fmt.Errorf("another server is already listening on %s", address)
		}
		if err := os.Remove(address); err != nil {
			return nil, fmt.Errorf("remove stale socket: %w", err)
		}
	}
	l, err := net.Listen("unix", address)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", address, err)
	}
	if err := os.Chmod(address, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("restrict socket: %w", err)
	}
	return l, nil
}
