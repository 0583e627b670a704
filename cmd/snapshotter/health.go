package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// runHealth asks the daemon's /healthz and exits 0 only on 200: an
// operator's quick check, and a probe for service managers that run a
// command (the DaemonSet's kubelet asks /healthz over HTTP itself).
func runHealth(g *globals, args []string, stdout, stderr io.Writer) int {
	fl := subcommandFlags(g, "health", stdout, stderr)
	timeout := fl.Duration("timeout", 5*time.Second, "how long (`D`, such as 10s) to wait for an answer")
	if _, code, ok := parseArgs(fl, args, 0, 0); !ok {
		return code
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "strata-snapshotter health: %v\n", err)
		return exitFailure
	}
	cfg, err := g.load()
	if err != nil {
		return fail(err)
	}
	address := cfg.MetricsAddress
	if address == "" {
		return fail(fmt.Errorf("metrics are off: set metrics_address (or pass --metrics-address)"))
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	transport, host := &http.Transport{}, address
	if socket := address; strings.HasPrefix(socket, "/") {
		transport.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socket)
		}
		host = "strata"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+host+"/healthz", nil)
	if err != nil {
		return fail(err)
	}
	resp, err := (&http.Client{Transport: transport}).Do(req)
	if err != nil {
		return fail(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fail(fmt.Errorf("unhealthy (%s): %s", resp.Status, strings.TrimSpace(string(body))))
	}
	stdout.Write(body)
	return 0
}
