// Command cert-manager-controller is a minimal cert-manager controller for the
// kube-mtls e2e cluster test. The published cert-manager module has no cmd/
// (upstream's cmd/controller is a separate, unpublished module), so this
// program wires the published controller packages together itself: issuers
// and clusterissuers (SelfSigned and CA only), the certificates controllers,
// the CertificateRequest signers for CA and SelfSigned, and the
// CertificateRequest approver. No ACME, Vault, Venafi, ingress/gateway shims,
// webhook, metrics server or leader election.
package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	controllerpkg "github.com/cert-manager/cert-manager/pkg/controller"
	"github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/approver"
	crca "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/ca"
	crselfsigned "github.com/cert-manager/cert-manager/pkg/controller/certificaterequests/selfsigned"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/issuing"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/keymanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/readiness"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/requestmanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/revisionmanager"
	"github.com/cert-manager/cert-manager/pkg/controller/certificates/trigger"
	"github.com/cert-manager/cert-manager/pkg/controller/clusterissuers"
	"github.com/cert-manager/cert-manager/pkg/controller/issuers"
	logf "github.com/cert-manager/cert-manager/pkg/logs"

	// Issuer implementations used by the issuers/clusterissuers controllers
	// (they register themselves in init). Only the kinds our tests use.
	_ "github.com/cert-manager/cert-manager/pkg/issuer/ca"
	_ "github.com/cert-manager/cert-manager/pkg/issuer/selfsigned"

	"kube-mtls/e2e/cluster/cert-manager/internal/common"
)

// supportedControllers is every controller this binary can run (and runs by
// default). Each package above registers its constructor with
// controllerpkg.Register in init; we only start the ones listed here.
var supportedControllers = []string{
	issuers.ControllerName,
	clusterissuers.ControllerName,
	trigger.ControllerName,
	keymanager.ControllerName,
	requestmanager.ControllerName,
	issuing.ControllerName,
	readiness.ControllerName,
	revisionmanager.ControllerName,
	crca.CRControllerName,
	crselfsigned.CRControllerName,
	approver.ControllerName,
}

// workers per controller; same as upstream's default.
const workers = 5

type options struct {
	common.CommonFlags
	clusterResourceNamespace string
	controllers              []string
	healthzAddress           string
	kubeAPIQPS               float32
	kubeAPIBurst             int
}

func main() {
	common.Main("cert-manager-controller", run)
}

func parseFlags() (*options, error) {
	o := &options{}
	fs := pflag.NewFlagSet("cert-manager-controller", pflag.ContinueOnError)
	o.Register(fs)
	fs.StringVar(&o.clusterResourceNamespace, "cluster-resource-namespace", "cert-manager",
		"Namespace holding the Secrets referenced by ClusterIssuers (e.g. a CA ClusterIssuer's key pair).")
	fs.StringSliceVar(&o.controllers, "controllers", supportedControllers,
		"Controllers to run (subset of the default list).")
	fs.StringVar(&o.healthzAddress, "healthz-listen-address", "",
		"If set (e.g. 127.0.0.1:9403), serve /healthz (alive) and /readyz (informer caches synced) there.")
	fs.Float32Var(&o.kubeAPIQPS, "kube-api-qps", 20, "Client QPS to the API server when API Priority and Fairness is off.")
	fs.IntVar(&o.kubeAPIBurst, "kube-api-burst", 50, "Client burst to the API server when API Priority and Fairness is off.")
	if err := common.ParseFlags(fs); err != nil {
		return nil, err
	}
	if err := common.CheckSubset("controllers", "controller", o.controllers, supportedControllers); err != nil {
		return nil, err
	}
	return o, nil
}

func run() error {
	version := common.Version()
	o, err := parseFlags()
	if err != nil {
		return err
	}
	if o.ShowVersion {
		fmt.Printf("cert-manager-controller (kube-mtls e2e build) %s\n", version)
		return nil
	}
	if err := o.Apply(); err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := logf.Log.WithName("controller")
	ctx = logf.NewContext(ctx, log)
	log.Info("starting cert-manager-controller", "version", version,
		"clusterResourceNamespace", o.clusterResourceNamespace, "leaderElection", false)

	restCfg, err := o.RESTConfig()
	if err != nil {
		return err
	}
	if err := common.WaitForAPI(ctx, log, restCfg, o.StartupTimeout); err != nil {
		return err
	}

	ctxFactory, err := controllerpkg.NewContextFactory(ctx, controllerpkg.ContextOptions{
		APIServerHost:      o.Master,
		Kubeconfig:         o.Kubeconfig,
		KubernetesAPIQPS:   o.kubeAPIQPS,
		KubernetesAPIBurst: o.kubeAPIBurst,
		IssuerOptions: controllerpkg.IssuerOptions{
			ClusterResourceNamespace: o.clusterResourceNamespace,
		},
		CertificateOptions: controllerpkg.CertificateOptions{
			// Upstream's defaults.
			CopiedAnnotationPrefixes:                 []string{"*", "-kubectl.kubernetes.io/", "-fluxcd.io/", "-argocd.argoproj.io/"},
			CertificateRequestMinimumBackoffDuration: time.Hour,
			CertificateRequestMaximumBackoffDuration: 32 * time.Hour,
		},
	})
	if err != nil {
		return fmt.Errorf("building controller context: %w", err)
	}
	// The shared informer factories live in every Context built from the
	// factory; build one to start them after all controllers registered.
	baseCtx, err := ctxFactory.Build()
	if err != nil {
		return fmt.Errorf("building base controller context: %w", err)
	}

	known := controllerpkg.Known()
	var skipped []string
	for name := range known {
		if !slices.Contains(o.controllers, name) {
			skipped = append(skipped, name)
		}
	}
	sort.Strings(skipped)
	log.Info("enabled controllers", "controllers", strings.Join(o.controllers, ","))
	if len(skipped) > 0 {
		log.Info("registered but not enabled", "controllers", strings.Join(skipped, ","))
	}

	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errCh := make(chan error, len(o.controllers))
	for _, name := range o.controllers {
		constructor, ok := known[name]
		if !ok {
			return fmt.Errorf("controller %q is not registered by the compiled-in cert-manager packages", name)
		}
		iface, err := constructor(ctxFactory)
		if err != nil {
			return fmt.Errorf("constructing controller %q: %w", name, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			log.V(logf.InfoLevel).Info("starting controller", "controller", name)
			if err := iface.Run(workers, runCtx); err != nil {
				errCh <- fmt.Errorf("controller %q: %w", name, err)
				cancel()
			}
		}()
	}

	done := runCtx.Done()
	baseCtx.SharedInformerFactory.Start(done)
	baseCtx.KubeSharedInformerFactory.Start(done)
	baseCtx.HTTP01ResourceMetadataInformersFactory.Start(done)

	var ready atomic.Bool
	go func() {
		baseCtx.SharedInformerFactory.WaitForCacheSync(done)
		baseCtx.KubeSharedInformerFactory.WaitForCacheSync(done)
		if runCtx.Err() == nil {
			ready.Store(true)
			log.Info("informer caches synced; controllers running")
		}
	}()
	if o.healthzAddress != "" {
		if err := serveHealth(runCtx, o.healthzAddress, &ready); err != nil {
			cancel()
			wg.Wait()
			return err
		}
	}

	wg.Wait()
	close(errCh)
	if err := <-errCh; err != nil {
		return err
	}
	log.Info("shut down")
	return nil
}

// serveHealth serves /healthz (process alive) and /readyz (caches synced)
// until ctx ends, so a test harness can wait for the controller to be ready.
func serveHealth(ctx context.Context, addr string, ready *atomic.Bool) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("--healthz-listen-address: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte("ok"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !ready.Load() {
			http.Error(w, "informer caches not synced", http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok"))
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	go func() {
		<-ctx.Done()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdownCtx)
	}()
	return nil
}
