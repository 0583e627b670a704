package main

import (
	"context"
	"path"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/log"
	"github.com/sirupsen/logrus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/strata-snapshotter/strata/metrics"
)

// The request log, so that an operator reading strata's log sees why
// containerd got an error: every call at debug with its duration, and every
// failed call with its method, key, code and error at a level chosen by who
// is at fault.

func logUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	logCall(ctx, info.FullMethod, req, start, err)
	return resp, err
}

func logStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	err := handler(srv, ss)
	logCall(ss.Context(), info.FullMethod, nil, start, err)
	return err
}

func logCall(ctx context.Context, method string, req any, start time.Time, err error) {
	if metrics.IsProbe(ctx) {
		return
	}
	code := status.Code(err)
	level := callLevel(code)
	if !log.G(ctx).Logger.IsLevelEnabled(level) {
		return
	}
	entry := log.G(ctx).WithFields(log.Fields{
		"method":   path.Base(method),
		"code":     code.String(),
		"duration": time.Since(start).String(),
	})
	for field, value := range requestFields(req) {
		entry = entry.WithField(field, value)
	}
	if err != nil {
		// The error as strata said it, without gRPC's wrapping, which
		// would repeat the code.
		entry.WithField("error", status.Convert(err).Message()).Log(level, "call failed")
		return
	}
	entry.Log(level, "call")
}

// callLevel is the level a call ending in code is logged at. NotFound and
// AlreadyExists are how containerd asks whether a layer is here (its
// unpacker Stats and Prepares every layer of a pull), so they are debug
// like success; a request strata refused is a warning; a failure of
// strata's own (a full disk, a damaged index, a bug) is an error. Both are
// on at the default level, info.
func callLevel(code codes.Code) logrus.Level {
	switch code {
	case codes.OK, codes.NotFound, codes.AlreadyExists, codes.Canceled:
		return logrus.DebugLevel
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange, codes.Unimplemented,
		codes.PermissionDenied, codes.Unauthenticated, codes.Aborted, codes.DeadlineExceeded:
		return logrus.WarnLevel
	}
	return logrus.ErrorLevel
}

// requestFields names the snapshots a request is about, under the names of
// the request's own fields.
func requestFields(req any) map[string]string {
	fields := map[string]string{}
	add := func(k, v string) {
		if v != "" {
			fields[k] = v
		}
	}
	if r, ok := req.(interface{ GetKey() string }); ok {
		add("key", r.GetKey())
	}
	if r, ok := req.(interface{ GetParent() string }); ok {
		add("parent", r.GetParent())
	}
	if r, ok := req.(interface{ GetName() string }); ok {
		add("name", r.GetName())
	}
	if r, ok := req.(*snapshotsapi.UpdateSnapshotRequest); ok {
		add("key", r.GetInfo().GetName())
	}
	return fields
}
