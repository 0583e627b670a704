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

// serve runs the daemon until SIGINT or SIGTERM: it claims its sockets,
// opens the snapshotter, serves it, and on a signal stops accepting, lets
// in-flight calls finish for up to cfg.ShutdownTimeout, and closes the
// index.
func serve(ctx context.Context, cfg Config) error {
	// Subscribe before anything slow, so a signal during start-up is not
	// lost to the default handler.
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(signals)

	// Claim every socket before opening the store, so a second daemon
	// aimed at a live one is refused without touching its root.
	ls, err := claimSockets(cfg)
	if err != nil {
		return err
	}
	defer ls.close()
	sn, err := snapshotter.New(ctx, cfg.Root, snapshotterOptions(cfg)...)
	if err != nil {
		return fmt.Errorf("open snapshotter at %s: %w", cfg.Root, err)
	}
	defer func() {
		if err := sn.Close(); err != nil {
			log.G(ctx).WithError(err).Error("failed to close snapshotter")
		}
	}()

	srvs, served := start(sn, cfg, ls)
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
		srvs.stop()
		return fmt.Errorf("serve %s: %w", cfg.Address, err)
	case sig := <-signals:
		log.G(ctx).WithField("signal", sig.String()).Info("shutting down")
	}
	sdnotify.SdNotify(false, sdnotify.SdNotifyStopping)
	srvs.shutdown(ctx, cfg.ShutdownTimeout.Duration)
	return nil
}

func snapshotterOptions(cfg Config) []snapshotter.Opt {
	opts := []snapshotter.Opt{snapshotter.WithCommitSync(cfg.SyncOnCommit), snapshotter.WithShareFiles(cfg.ShareFiles)}
	if cfg.SyncRemove {
		opts = append(opts, snapshotter.WithSyncRemove)
	}
	if len(cfg.MountOptions) > 0 {
		opts = append(opts, snapshotter.WithMountOptions(cfg.MountOptions))
	}
	return opts
}

// listeners are the daemon's sockets: the Snapshots API, the admin API and,
// when configured, metrics.
type listeners struct {
	api, admin, metrics net.Listener
}

func claimSockets(cfg Config) (ls listeners, err error) {
	defer func() {
		if err != nil {
			ls.close()
		}
	}()
	if ls.api, err = listen(cfg.Address); err != nil {
		return ls, err
	}
	if ls.admin, err = listen(cfg.AdminAddress); err != nil {
		return ls, err
	}
	if cfg.MetricsAddress != "" {
		ls.metrics, err = listenMetrics(cfg.MetricsAddress)
	}
	return ls, err
}

// close closes the listeners (again, harmlessly, after their servers have):
// a stop that came before a Serve goroutine ran leaves that goroutine to
// close its listener, which would unlink the socket only if it ran before
// the process exits.
func (ls listeners) close() {
	for _, l := range []net.Listener{ls.api, ls.admin, ls.metrics} {
		if l != nil {
			l.Close()
		}
	}
}

// servers are the daemon's three servers.
type servers struct {
	api            *grpc.Server
	admin, metrics *http.Server
}

// start serves sn on the listeners; served reports the first server that
// stops on its own.
func start(sn snapshotter.Snapshotter, cfg Config, ls listeners) (servers, <-chan error) {
	m := metrics.New(sn, buildVersion())
	srvs := servers{
		api:   newGRPCServer(sn, grpc.ChainUnaryInterceptor(m.UnaryInterceptor, logUnary), grpc.ChainStreamInterceptor(m.StreamInterceptor, logStream)),
		admin: &http.Server{Handler: admin.Handler(sn), ReadHeaderTimeout: 10 * time.Second},
	}
	served := make(chan error, 3)
	go func() { served <- srvs.api.Serve(ls.api) }()
	serveHTTP := func(name string, srv *http.Server, l net.Listener) {
		if err := srv.Serve(l); !errors.Is(err, http.ErrServerClosed) {
			served <- fmt.Errorf("%s: %w", name, err)
		}
	}
	go serveHTTP("admin", srvs.admin, ls.admin)
	if ls.metrics != nil {
		srvs.metrics = &http.Server{Handler: m.Handler(healthCheck(sn, cfg.Address)), ReadHeaderTimeout: 10 * time.Second}
		go serveHTTP("metrics", srvs.metrics, ls.metrics)
	}
	return srvs, served
}

// stop closes every server at once.
func (s servers) stop() {
	s.api.Stop()
	s.admin.Close()
	if s.metrics != nil {
		s.metrics.Close()
	}
}

// shutdown stops accepting and lets in-flight calls finish for up to
// timeout, then cancels them; metrics (and /healthz) answer until the end.
func (s servers) shutdown(ctx context.Context, timeout time.Duration) {
	if s.metrics != nil {
		defer s.metrics.Close()
	}
	deadline, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	stopped := make(chan struct{})
	go func() {
		s.api.GracefulStop()
		close(stopped)
	}()
	adminStopped := make(chan error, 1)
	go func() { adminStopped <- s.admin.Shutdown(deadline) }()
	select {
	case <-stopped:
	case <-deadline.Done():
		log.G(ctx).WithField("timeout", timeout.String()).Warn("in-flight calls did not finish in time; cancelling them")
		s.api.Stop()
		<-stopped
	}
	if err := <-adminStopped; err != nil {
		s.admin.Close()
	}
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
