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
	"strings"
	"syscall"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/errdefs/pkg/errgrpc"
	"github.com/containerd/log"
	sdnotify "github.com/coreos/go-systemd/v22/daemon"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/strata-snapshotter/strata/admin"
	"github.com/strata-snapshotter/strata/metrics"
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

	opts := []snapshotter.Opt{snapshotter.WithCommitSync(cfg.SyncOnCommit)}
	if cfg.SyncRemove {
		opts = append(opts, snapshotter.WithSyncRemove)
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

	m := metrics.New(sn, buildVersion())
	srv := newGRPCServer(sn, grpc.ChainUnaryInterceptor(m.UnaryInterceptor, logUnary), grpc.ChainStreamInterceptor(m.StreamInterceptor, logStream))

	adminSrv := &http.Server{Handler: admin.Handler(sn), ReadHeaderTimeout: 10 * time.Second}

	served := make(chan error, 2)
	go func() { served <- srv.Serve(l) }()
	go func() {
		if err := adminSrv.Serve(adminL); !errors.Is(err, http.ErrServerClosed) {
			served <- fmt.Errorf("admin: %w", err)
		}
	}()

	var metricsSrv *http.Server
	if cfg.MetricsAddress != "" {
		ml, err := listenMetrics(cfg.MetricsAddress)
		if err != nil {
			srv.Stop()
			adminSrv.Close()
			return err
		}
		metricsSrv = &http.Server{Handler: m.Handler(healthCheck(sn, cfg.Address)), ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := metricsSrv.Serve(ml); !errors.Is(err, http.ErrServerClosed) {
				served <- fmt.Errorf("metrics: %w", err)
			}
		}()
	}
	log.G(ctx).WithFields(log.Fields{
		"address": cfg.Address, "admin_address": cfg.AdminAddress, "metrics_address": cfg.MetricsAddress,
		"root": cfg.Root, "log_level": cfg.LogLevel, "version": buildVersion(),
	}).Info("strata-snapshotter serving")
	// Tell systemd (Type=notify) the socket serves; a no-op elsewhere.
	if _, err := sdnotify.SdNotify(false, sdnotify.SdNotifyReady); err != nil {
		log.G(ctx).WithError(err).Warn("failed to notify systemd")
	}

	select {
	case err := <-served:
		return fmt.Errorf("serve %s: %w", cfg.Address, err)
	case sig := <-signals:
		log.G(ctx).WithField("signal", sig.String()).Info("shutting down")
	}
	sdnotify.SdNotify(false, sdnotify.SdNotifyStopping)
	if metricsSrv != nil {
		defer metricsSrv.Close()
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
	// A stop that came before a Serve goroutine ran leaves that goroutine
	// to close its listener, which would unlink the socket only if it ran
	// before the process exits: close them here (again, harmlessly).
	l.Close()
	adminL.Close()
	return nil
}

// newGRPCServer serves containerd's Snapshots API for sn. Interceptors in
// opts run outside the conversion of errors to gRPC codes, so they see the
// codes clients see.
func newGRPCServer(sn snapshots.Snapshotter, opts ...grpc.ServerOption) *grpc.Server {
	srv := grpc.NewServer(append(opts, grpc.ChainStreamInterceptor(streamErrorsToGRPC))...)
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

// listenMetrics listens on a unix socket (root only, like the others) or a
// TCP address.
func listenMetrics(addr string) (net.Listener, error) {
	if strings.HasPrefix(addr, "/") {
		return listen(addr)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen for metrics on %s: %w", addr, err)
	}
	return l, nil
}

// healthCheck is healthy when the index can be read and the Snapshots
// socket answers a call end to end (a Stat of a key that cannot exist must
// come back NotFound).
func healthCheck(sn snapshotter.Snapshotter, address string) func(context.Context) error {
	return func(ctx context.Context) error {
		if _, err := sn.Stats(ctx); err != nil {
			return fmt.Errorf("index unreadable: %w", err)
		}
		conn, err := grpc.NewClient("unix://"+address, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = snapshotsapi.NewSnapshotsClient(conn).Stat(metrics.Probe(ctx), &snapshotsapi.StatSnapshotRequest{Key: "\x00strata-health-check"})
		if status.Code(err) != codes.NotFound {
			return fmt.Errorf("snapshots socket %s: %v", address, err)
		}
		return nil
	}
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
