// Package common holds the few helpers shared by our two cert-manager main
// programs (controller and cainjector). Upstream's cmd/ modules are not
// published, so e2e/cluster builds its own minimal mains on top of the
// published github.com/cert-manager/cert-manager library packages; this file
// keeps the version, kubeconfig and start-up checks identical for both.
package common

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"github.com/spf13/pflag"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	logsapi "k8s.io/component-base/logs/api/v1"

	utilfeature "github.com/cert-manager/cert-manager/pkg/util/feature"

	logf "github.com/cert-manager/cert-manager/pkg/logs"
	"github.com/cert-manager/cert-manager/pkg/util"
)

// CertManagerModule is the published module the binaries are built from.
const CertManagerModule = "github.com/cert-manager/cert-manager"

// CertManagerGroupVersion is the API group/version both binaries need served
// (i.e. the cert-manager CRDs must be installed) before they can work.
const CertManagerGroupVersion = "cert-manager.io/v1"

// Version returns the version of the cert-manager library compiled in (read
// from the Go build info, so it always matches go.mod), and makes
// cert-manager's own version variable (used in User-Agent headers) agree.
func Version() string {
	v := "unknown"
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range bi.Deps {
			if dep.Path == CertManagerModule {
				v = dep.Version
				if dep.Replace != nil {
					v = dep.Replace.Version
				}
			}
		}
	}
	util.AppVersion = v
	return v
}

// CommonFlags are the flags both binaries accept.
type CommonFlags struct {
	Kubeconfig     string
	Master         string
	LeaderElect    bool
	StartupTimeout time.Duration
	ShowVersion    bool
	Logging        *logsapi.LoggingConfiguration
}

// Register adds the common flags (and cert-manager's usual -v/--vmodule/
// --logging-format logging flags) to fs.
func (c *CommonFlags) Register(fs *pflag.FlagSet) {
	c.Logging = logsapi.NewLoggingConfiguration()
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "",
		"Path to a kubeconfig file. With neither --kubeconfig nor --master, the in-cluster config is used.")
	fs.StringVar(&c.Master, "master", "",
		"Optional API server address; overrides the server in the kubeconfig.")
	fs.BoolVar(&c.LeaderElect, "leader-elect", false,
		"Accepted for compatibility with upstream flags; only false is supported (this build never does leader election).")
	fs.DurationVar(&c.StartupTimeout, "startup-timeout", 2*time.Minute,
		"How long to wait at start-up for the API server to answer and serve "+CertManagerGroupVersion+" (cert-manager CRDs installed) before exiting with an error.")
	fs.BoolVar(&c.ShowVersion, "version", false, "Print the cert-manager version and exit.")
	logf.AddFlagsNonDeprecated(c.Logging, fs)
}

// Apply validates the common flags and configures logging. Call after Parse.
func (c *CommonFlags) Apply() error {
	if c.LeaderElect {
		return errors.New("--leader-elect=true is not supported by this e2e build; run a single replica with --leader-elect=false")
	}
	logf.InitLogs()
	if err := logf.ValidateAndApply(c.Logging); err != nil {
		return fmt.Errorf("invalid logging flags: %w", err)
	}
	return nil
}

// RESTConfig loads the client configuration selected by --kubeconfig and
// --master; with neither set it uses the in-cluster configuration. This is the
// same rule cert-manager's controller context applies to the same two values.
func (c *CommonFlags) RESTConfig() (*rest.Config, error) {
	if c.Kubeconfig == "" && c.Master == "" {
		cfg, err := rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("no --kubeconfig given and not running in a cluster: %w", err)
		}
		return cfg, nil
	}
	cfg, err := clientcmd.BuildConfigFromFlags(c.Master, c.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("loading kubeconfig %q: %w", c.Kubeconfig, err)
	}
	return cfg, nil
}

// WaitForAPI blocks until the API server answers and serves the cert-manager
// API group (the CRDs are installed), or fails after timeout with the last
// error seen, so a broken environment shows up as one clear message and a
// non-zero exit instead of endless informer retries.
func WaitForAPI(ctx context.Context, log logr.Logger, cfg *rest.Config, timeout time.Duration) error {
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return fmt.Errorf("creating discovery client: %w", err)
	}
	deadline := time.Now().Add(timeout)
	lastLog := time.Time{}
	for {
		_, err = dc.ServerResourcesForGroupVersion(CertManagerGroupVersion)
		if err == nil {
			log.Info("API server reachable and serving cert-manager API", "host", cfg.Host, "groupVersion", CertManagerGroupVersion)
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("API server at %s not usable after %s (is it running, and are the cert-manager CRDs installed?): %w", cfg.Host, timeout, err)
		}
		if time.Since(lastLog) > 5*time.Second {
			log.Info("waiting for API server / cert-manager CRDs", "host", cfg.Host, "err", err.Error())
			lastLog = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// ParseFlags parses the command line into fs (the feature-gate flag added),
// exits 0 for --help, and refuses positional arguments.
func ParseFlags(fs *pflag.FlagSet) error {
	utilfeature.DefaultMutableFeatureGate.AddFlag(fs)
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			os.Exit(0)
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	return nil
}

// CheckSubset refuses any item of got that is not in supported, naming the flag.
func CheckSubset(flag, what string, got, supported []string) error {
	for _, item := range got {
		if !slices.Contains(supported, item) {
			return fmt.Errorf("unknown %s %q in --%s (supported: %s)", what, item, flag, strings.Join(supported, ","))
		}
	}
	return nil
}

// Main runs a binary's run function: an error is logged and exits 1; logs are
// flushed either way.
func Main(name string, run func() error) {
	if err := run(); err != nil {
		logf.Log.Error(err, name+" failed")
		logf.FlushLogs()
		os.Exit(1)
	}
	logf.FlushLogs()
}
