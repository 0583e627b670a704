package integration

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/strata-snapshotter/strata/containerdproc"
)

// This file is a single-node Kubernetes cluster on this machine: etcd,
// kube-apiserver, kube-controller-manager and kube-scheduler on 127.0.0.1,
// and a kubelet driving the node's containerd at the standard socket, as on
// a node where strata's DaemonSet is installed. The DaemonSet's host paths
// are the real ones (/var/lib/strata, /run/strata, /etc/containerd,
// /run/containerd): the test refuses to start when something else uses
// them, and removes what it made there afterwards.

// The host paths the DaemonSet uses, and the node's containerd socket.
const (
	hostStrataRoot      = "/var/lib/strata"
	hostStrataRun       = "/run/strata"
	hostContainerdCfg   = "/etc/containerd/config.toml"
	hostContainerdSock  = "/run/containerd/containerd.sock"
	clusterNode         = "strata-node"
	clusterNodeIP       = "10.254.0.1"
	clusterBridge       = "strata-cni0"
	clusterPodSubnet    = "10.254.1.0/24"
	clusterCNINetwork   = "strata-test"
	clusterServiceRange = "10.254.2.0/24"
)

// podLogLinks is where the kubelet links every container's log, whatever
// its podLogsDir.
const podLogLinks = "/var/log/containers"

// kubeBin holds etcd and the Kubernetes binaries (tools/kubernetes.sh).
var kubeBin string

type cluster struct {
	t          *testing.T
	e          *Env // the node's containerd (Containerd) and strata's paths
	dir        string
	kubeconfig string
	sup        *supervisor
	control    []*proc // etcd, API server, controller manager, scheduler
	kubelet    *proc
	cfgBackup  []byte            // the host's containerd config before the test, if any
	madeDirs   []string          // host directories the test created
	cfgBackups []string          // containerd-config's backups there before the test
	sysctls    map[string][]byte // kernel settings the kubelet and CNI change
	netns      map[string]bool   // the network namespaces before the test
}

// changedSysctls are the kernel settings the kubelet (protectKernelDefaults
// off) and the bridge CNI plugin set, restored after the test.
var changedSysctls = []string{
	"vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
	"kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/ipv4/ip_forward",
}

// newCluster starts a node: containerd with CRI on overlayfs and nothing
// about strata (the node before strata is installed), under a supervisor
// that restarts it as systemd would, then the control plane and the
// kubelet, and waits until the node is Ready.
func newCluster(t *testing.T) *cluster {
	t.Helper()
	checkHostFree(t)
	dir, err := os.MkdirTemp("", "sk-")
	if err != nil {
		t.Fatal(err)
	}
	// User-namespaced pods' roots (host IDs far from 0) must reach their
	// bundles and kubelet files under it, as under /run and /var/lib.
	if err := os.Chmod(dir, 0o711); err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, dir: dir, kubeconfig: filepath.Join(dir, "admin.kubeconfig")}
	c.e = &Env{
		t:          t,
		Dir:        dir,
		StrataRoot: hostStrataRoot,
		StrataSock: filepath.Join(hostStrataRun, "strata.sock"),
		Sock:       hostContainerdSock,
		opts:       EnvOptions{CRI: true, Unregistered: true},
	}
	t.Cleanup(c.teardown)

	c.prepareHost()
	if err := os.WriteFile(hostContainerdCfg, []byte(c.e.containerdConfig()), 0o644); err != nil {
		t.Fatal(err)
	}
	c.sup = c.e.superviseContainerd(hostContainerdCfg)
	c.sup.waitStart(t, 1, 2*time.Minute)

	if err := writePKI(dir); err != nil {
		t.Fatal(err)
	}
	c.startControlPlane()
	c.startKubelet()
	// The node object appears when the kubelet registers it; kubectl wait
	// fails on an object that does not exist yet.
	eventually(t, 3*time.Minute, func() (bool, string) {
		out, err := c.try("get", "node", clusterNode, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		return err == nil && out == "True", fmt.Sprintf("node Ready: %q %v", out, err)
	})
	return c
}

// checkHostFree fails unless the DaemonSet's host paths are free: no
// containerd on the standard socket, no strata root or runtime directory.
func checkHostFree(t *testing.T) {
	t.Helper()
	if pid, err := containerdproc.ServerPID(t.Context(), hostContainerdSock); err == nil {
		t.Fatalf("a containerd (pid %d) serves %s: the cluster test runs the node's containerd there itself; stop it first", pid, hostContainerdSock)
	}
	for _, p := range []string{hostStrataRoot, hostStrataRun} {
		if es, err := os.ReadDir(p); err == nil && len(es) > 0 {
			t.Fatalf("%s is in use: the cluster test installs strata there, as the DaemonSet does; move it away first", p)
		}
	}
}

// prepareHost makes what a systemd node has and this machine lacks: a
// shared mount under strata's root (HostToContainer propagation needs one;
// systemd makes / shared), a node address that is not loopback (the kubelet
// refuses one), and a CNI network for pods.
func (c *cluster) prepareHost() {
	t := c.t
	if b, err := os.ReadFile(hostContainerdCfg); err == nil {
		c.cfgBackup = b
	}
	c.cfgBackups, _ = filepath.Glob(hostContainerdCfg + ".strata-backup-*")
	c.netns = map[string]bool{}
	before, _ := filepath.Glob("/run/netns/cni-*")
	for _, n := range before {
		c.netns[n] = true
	}
	c.sysctls = map[string][]byte{}
	for _, k := range changedSysctls {
		if b, err := os.ReadFile("/proc/sys/" + k); err == nil {
			c.sysctls[k] = b
		}
	}
	for _, d := range []string{hostStrataRoot, hostStrataRun, filepath.Dir(hostContainerdCfg), filepath.Dir(hostContainerdSock), podLogLinks} {
		if _, err := os.Stat(d); os.IsNotExist(err) {
			c.madeDirs = append(c.madeDirs, d)
		}
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := unix.Mount(hostStrataRoot, hostStrataRoot, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("", hostStrataRoot, "", unix.MS_SHARED, ""); err != nil {
		t.Fatal(err)
	}
	// On lo, which every machine has: the kubelet refuses a loopback
	// address, not an address on the loopback interface.
	c.e.run("ip", "addr", "add", clusterNodeIP+"/32", "dev", "lo")
	cni := filepath.Join(c.dir, "cni")
	if err := os.MkdirAll(cni, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": %q, "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}]}}
]}`, clusterCNINetwork, clusterBridge, clusterPodSubnet)
	if err := os.WriteFile(filepath.Join(cni, "10-strata-test.conflist"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
}

// startControl starts a control-plane process.
func (c *cluster) startControl(name string, args ...string) *proc {
	c.t.Helper()
	p := startProc(c.t, c.dir, name, args...)
	c.control = append(c.control, p)
	return p
}

func (c *cluster) startControlPlane() {
	t := c.t
	ports := make([]int, 5)
	for i := range ports {
		p, err := freePortErr()
		if err != nil {
			t.Fatal(err)
		}
		ports[i] = p
	}
	etcdURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	peerURL := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	c.startControl("etcd", filepath.Join(kubeBin, "etcd"), "--data-dir", filepath.Join(c.dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default="+peerURL, "--log-level", "warn")
	eventually(t, time.Minute, func() (bool, string) {
		resp, err := http.Get(etcdURL + "/health")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, "etcd /health: " + resp.Status
	})

	pki := func(name string) string { return filepath.Join(c.dir, "pki", name) }
	server := fmt.Sprintf("https://127.0.0.1:%d", ports[2])
	c.writeKubeconfig(server)
	c.startControl("kube-apiserver", filepath.Join(kubeBin, "kube-apiserver"),
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1", "--secure-port", fmt.Sprint(ports[2]),
		// A loopback address is not a valid endpoint for the kubernetes
		// Service; nothing here needs that Service.
		"--endpoint-reconciler-type", "none",
		"--service-cluster-ip-range", clusterServiceRange,
		"--client-ca-file", pki("ca.crt"),
		"--tls-cert-file", pki("apiserver.crt"), "--tls-private-key-file", pki("apiserver.key"),
		"--kubelet-client-certificate", pki("admin.crt"), "--kubelet-client-key", pki("admin.key"),
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", pki("sa.pub"), "--service-account-signing-key-file", pki("sa.key"),
		"--kubelet-preferred-address-types", "InternalIP",
		"--authorization-mode", "Node,RBAC", "--allow-privileged=true")
	eventually(t, 2*time.Minute, func() (bool, string) {
		out, err := c.try("get", "--raw", "/readyz")
		return err == nil, fmt.Sprintf("API server /readyz: %v %s", err, out)
	})
	c.startControl("kube-controller-manager", filepath.Join(kubeBin, "kube-controller-manager"),
		"--kubeconfig", c.kubeconfig, "--leader-elect=false",
		"--bind-address", "127.0.0.1", "--secure-port", fmt.Sprint(ports[3]),
		"--service-account-private-key-file", pki("sa.key"), "--root-ca-file", pki("ca.crt"),
		"--use-service-account-credentials=false")
	c.startControl("kube-scheduler", filepath.Join(kubeBin, "kube-scheduler"),
		"--kubeconfig", c.kubeconfig, "--leader-elect=false",
		"--bind-address", "127.0.0.1", "--secure-port", fmt.Sprint(ports[4]))
}

func (c *cluster) writeKubeconfig(server string) {
	pki := filepath.Join(c.dir, "pki")
	kc := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: strata-test
  cluster:
    server: %s
    certificate-authority: %s/ca.crt
users:
- name: admin
  user:
    client-certificate: %s/admin.crt
    client-key: %s/admin.key
contexts:
- name: strata-test
  context:
    cluster: strata-test
    user: admin
current-context: strata-test
`, server, pki, pki, pki)
	if err := os.WriteFile(c.kubeconfig, []byte(kc), 0o600); err != nil {
		c.t.Fatal(err)
	}
}

// startKubelet runs the kubelet as on a node of this machine's kind:
// cgroup v1 with the cgroupfs driver, the node's containerd, a node
// address of its own. Image garbage collection is eager so the test sees it
// work: each 5-minute pass removes the images no container has used for a
// minute (imageMaximumGCAge; the disk-usage thresholds would first make a
// new image wait for a pass that saw it). The images the test imports
// rather than pulls are pinned.
func (c *cluster) startKubelet() {
	t := c.t
	port, err := freePortErr()
	if err != nil {
		t.Fatal(err)
	}
	health, err := freePortErr()
	if err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(c.dir, "kubelet.yaml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://%s
address: %s
port: %d
healthzBindAddress: 127.0.0.1
healthzPort: %d
readOnlyPort: 0
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: false
  x509:
    clientCAFile: %s
authorization:
  mode: AlwaysAllow
podLogsDir: %s
failSwapOn: false
imageMinimumGCAge: 1s
imageMaximumGCAge: 1m
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%%
  nodefs.inodesFree: 1%%
  imagefs.available: 1%%
  imagefs.inodesFree: 1%%
`, hostContainerdSock, clusterNodeIP, port, health, filepath.Join(c.dir, "pki", "ca.crt"), filepath.Join(c.dir, "pods"))), 0o600); err != nil {
		t.Fatal(err)
	}
	c.kubelet = startProc(t, c.dir, "kubelet", filepath.Join(kubeBin, "kubelet"),
		"--config", cfg, "--kubeconfig", c.kubeconfig, "--root-dir", filepath.Join(c.dir, "kubelet"),
		"--hostname-override", clusterNode, "--node-ip", clusterNodeIP)
}

// kubectl runs kubectl against the cluster and returns its output, failing
// the test on a non-zero exit.
func (c *cluster) kubectl(args ...string) string {
	c.t.Helper()
	out, err := c.try(args...)
	if err != nil {
		c.t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (c *cluster) try(args ...string) (string, error) {
	return c.e.try(append([]string{filepath.Join(kubeBin, "kubectl"), "--kubeconfig", c.kubeconfig}, args...)...)
}

// get decodes kubectl get -o json into v.
func (c *cluster) get(v any, args ...string) {
	c.t.Helper()
	if err := json.Unmarshal([]byte(c.kubectl(append([]string{"get", "-o", "json"}, args...)...)), v); err != nil {
		c.t.Fatalf("kubectl get %v: %v", args, err)
	}
}

// teardown stops the kubelet (so it restarts nothing), then every
// container, containerd, the control plane, and undoes prepareHost.
func (c *cluster) teardown() {
	t := c.t
	if t.Failed() && c.kubelet != nil {
		for _, args := range [][]string{
			{"get", "pods", "-A", "-o", "wide"},
			{"get", "events", "-A"},
			{"-n", "strata-system", "logs", "ds/strata-snapshotter", "--all-containers", "--tail", "60"},
		} {
			out, err := c.try(args...)
			t.Logf("--- kubectl %s (%v) ---\n%s", strings.Join(args, " "), err, out)
		}
	}
	if c.kubelet != nil {
		c.kubelet.stop(syscall.SIGTERM, 30*time.Second)
	}
	if c.sup != nil {
		c.sup.halt()
	}
	// Pods go through CRI while containerd runs, so their network
	// namespaces and CNI state go with them.
	if c.e.Containerd != nil {
		c.e.try(c.e.crictlArgs("rmp", "--all", "--force")...)
	}
	for i := len(c.control) - 1; i >= 0; i-- {
		c.control[i].stop(syscall.SIGTERM, 30*time.Second)
	}
	// Env's teardown kills what containers are left, stops containerd,
	// unmounts what is under the cluster's directory, prints the logs of a
	// failed test and removes the directory.
	c.e.teardown()
	killShims(hostContainerdSock)
	unmountUnder(t, hostStrataRoot)
	unmountUnder(t, hostStrataRun)
	for _, p := range []string{hostStrataRoot, hostStrataRun} {
		if slices.Contains(c.madeDirs, p) {
			os.RemoveAll(p)
		} else if es, err := os.ReadDir(p); err == nil {
			for _, e := range es { // it was empty before the test
				os.RemoveAll(filepath.Join(p, e.Name()))
			}
		}
	}
	os.RemoveAll("/var/lib/cni/networks/" + clusterCNINetwork)
	results, _ := filepath.Glob("/var/lib/cni/results/" + clusterCNINetwork + "-*")
	for _, p := range results {
		os.Remove(p)
	}
	// The kubelet's links to this cluster's container logs.
	links, _ := filepath.Glob(filepath.Join(podLogLinks, "*"))
	for _, p := range links {
		if target, err := os.Readlink(p); err == nil && strings.HasPrefix(target, c.dir+"/") {
			os.Remove(p)
		}
	}
	if c.cfgBackup != nil {
		os.WriteFile(hostContainerdCfg, c.cfgBackup, 0o644)
	} else {
		os.Remove(hostContainerdCfg)
	}
	// The backups the DaemonSet's containerd-config --write kept.
	backups, _ := filepath.Glob(hostContainerdCfg + ".strata-backup-*")
	for _, p := range backups {
		if !slices.Contains(c.cfgBackups, p) {
			os.Remove(p)
		}
	}
	// containerd's and runc's state beside the socket (fifo/, runc/, s/)
	// is the test's when the test made the directory.
	containerdRun := filepath.Dir(hostContainerdSock)
	unmountUnder(t, containerdRun)
	for _, d := range c.madeDirs {
		if d == containerdRun {
			os.RemoveAll(d)
		}
		os.Remove(d) // only if empty: what else may be there is not the test's
	}
	for k, v := range c.sysctls {
		os.WriteFile("/proc/sys/"+k, v, 0o644)
	}
	// Pods the CRI removal could not reach (a strata pod once strata is
	// gone) leave their CNI network namespaces.
	after, _ := filepath.Glob("/run/netns/cni-*")
	for _, n := range after {
		if !c.netns[n] {
			exec.Command("ip", "netns", "del", filepath.Base(n)).Run()
		}
	}
	exec.Command("ip", "addr", "del", clusterNodeIP+"/32", "dev", "lo").Run()
	exec.Command("ip", "link", "del", clusterBridge).Run()
	removeCgroups("kubepods")
}

// removeCgroups removes the kubelet's (now empty) cgroup tree from every
// cgroup v1 hierarchy and the unified one, deepest first.
func removeCgroups(name string) {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*/" + name)
	if _, err := os.Stat("/sys/fs/cgroup/" + name); err == nil {
		roots = append(roots, "/sys/fs/cgroup/"+name)
	}
	for _, root := range roots {
		var dirs []string
		filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			unix.Rmdir(dirs[i])
		}
	}
}

// writePKI writes the cluster's certificates under dir/pki: a CA, the API
// server's serving certificate, one client certificate in system:masters
// (for kubectl, the controllers, the kubelet, and the API server's calls to
// the kubelet), and the service-account signing key.
func writePKI(dir string) error {
	pki := filepath.Join(dir, "pki")
	if err := os.MkdirAll(pki, 0o700); err != nil {
		return err
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now().Add(-time.Hour)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "strata-test-ca"},
		NotBefore: now, NotAfter: now.Add(48 * time.Hour),
		IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return err
	}
	if err := writePEM(filepath.Join(pki, "ca.crt"), "CERTIFICATE", caDER); err != nil {
		return err
	}
	leaf := func(name string, serial int64, subject pkix.Name, ips []net.IP, dns []string) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: subject,
			NotBefore: now, NotAfter: now.Add(48 * time.Hour),
			KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
			IPAddresses: ips, DNSNames: dns,
		}, ca, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return err
		}
		return errors.Join(writePEM(filepath.Join(pki, name+".crt"), "CERTIFICATE", der),
			writePEM(filepath.Join(pki, name+".key"), "EC PRIVATE KEY", keyDER))
	}
	_, svc, _ := net.ParseCIDR(clusterServiceRange)
	svcIP := svc.IP.To4()
	svcIP[3]++
	if err := leaf("apiserver", 2, pkix.Name{CommonName: "kube-apiserver"},
		[]net.IP{net.ParseIP("127.0.0.1"), svcIP},
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"}); err != nil {
		return err
	}
	if err := leaf("admin", 3, pkix.Name{CommonName: "strata-test-admin", Organization: []string{"system:masters"}}, nil, nil); err != nil {
		return err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	saDER, err := x509.MarshalECPrivateKey(saKey)
	if err != nil {
		return err
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return err
	}
	return errors.Join(writePEM(filepath.Join(pki, "sa.key"), "EC PRIVATE KEY", saDER),
		writePEM(filepath.Join(pki, "sa.pub"), "PUBLIC KEY", saPub))
}

func writePEM(path, kind string, der []byte) error {
	var b bytes.Buffer
	if err := pem.Encode(&b, &pem.Block{Type: kind, Bytes: der}); err != nil {
		return err
	}
	return os.WriteFile(path, b.Bytes(), 0o600)
}

// kubeletGet asks the kubelet's API through the API server's node proxy, as
// metrics-server does: status code and body.
func (c *cluster) kubeletGet(path string) (int, []byte) {
	c.t.Helper()
	out, err := c.try("get", "--raw", "/api/v1/nodes/"+clusterNode+"/proxy"+path)
	if err != nil {
		// kubectl reports the status in its error; 200 is all the callers
		// accept.
		return 0, []byte(err.Error())
	}
	return 200, []byte(out)
}
