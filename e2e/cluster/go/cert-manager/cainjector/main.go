// Command cert-manager-cainjector is a minimal cert-manager CA injector for the
// kube-mtls e2e cluster test. Upstream's cmd/cainjector is a separate,
// unpublished module, so this program builds a controller-runtime manager
// itself and registers the injectors from the published
// pkg/controller/cainjector package. It fills in caBundle on webhook
// configurations (and APIServices/CRDs) annotated with
// cert-manager.io/inject-ca-from (or inject-ca-from-secret). No leader
// election, metrics or profiling.
package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	kscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/klog/v2"
	apiregv1 "k8s.io/kube-aggregator/pkg/apis/apiregistration/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	cmscheme "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned/scheme"
	"github.com/cert-manager/cert-manager/pkg/controller/cainjector"
	logf "github.com/cert-manager/cert-manager/pkg/logs"
	"github.com/cert-manager/cert-manager/pkg/util"

	"kube-mtls/e2e/cluster/cert-manager/internal/common"
)

// allInjectables are the kinds cainjector can patch; all are enabled by
// default, as upstream does.
var allInjectables = []string{
	cainjector.MutatingWebhookConfigurationName,
	cainjector.ValidatingWebhookConfigurationName,
	cainjector.APIServiceName,
	cainjector.CustomResourceDefinitionName,
}

type options struct {
	common.CommonFlags
	namespace                    string
	injectables                  []string
	enableCertificatesDataSource bool
	healthzAddress               string
}

func main() {
	common.Main("cert-manager-cainjector", run)
}

func parseFlags() (*options, error) {
	o := &options{}
	fs := pflag.NewFlagSet("cert-manager-cainjector", pflag.ContinueOnError)
	o.Register(fs)
	fs.StringVar(&o.namespace, "namespace", "",
		"Only watch injectables and sources in this namespace (empty: all namespaces).")
	fs.StringSliceVar(&o.injectables, "injectables", allInjectables,
		"Kinds to inject CA bundles into.")
	fs.BoolVar(&o.enableCertificatesDataSource, "enable-certificates-data-source", true,
		"Support the cert-manager.io/inject-ca-from annotation (CA from a Certificate's Secret). Needs the Certificate CRD.")
	fs.StringVar(&o.healthzAddress, "healthz-listen-address", "",
		"If set (e.g. 127.0.0.1:9404), serve /healthz and /readyz there.")
	if err := common.ParseFlags(fs); err != nil {
		return nil, err
	}
	if err := common.CheckSubset("injectables", "kind", o.injectables, allInjectables); err != nil {
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
		fmt.Printf("cert-manager-cainjector (kube-mtls e2e build) %s\n", version)
		return nil
	}
	if err := o.Apply(); err != nil {
		return err
	}
	// controller-runtime logs through its own global logger; route it to klog
	// like the rest of cert-manager.
	ctrl.SetLogger(klog.Background())

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := logf.Log.WithName("cainjector")
	ctx = logf.NewContext(ctx, log)
	log.Info("starting cert-manager-cainjector", "version", version, "leaderElection", false,
		"injectables", strings.Join(o.injectables, ","), "certificatesDataSource", o.enableCertificatesDataSource)

	restCfg, err := o.RESTConfig()
	if err != nil {
		return err
	}
	if o.enableCertificatesDataSource {
		// The manager watches Certificates, which fails if the CRD is absent.
		if err := common.WaitForAPI(ctx, log, restCfg, o.StartupTimeout); err != nil {
			return err
		}
	}

	scheme := runtime.NewScheme()
	utilruntime.Must(kscheme.AddToScheme(scheme))
	utilruntime.Must(cmscheme.AddToScheme(scheme))
	utilruntime.Must(apiextv1.AddToScheme(scheme))
	utilruntime.Must(apiregv1.AddToScheme(scheme))
	utilruntime.Must(admissionregv1.AddToScheme(scheme))

	var defaultNamespaces map[string]cache.Config
	if o.namespace != "" {
		defaultNamespaces = map[string]cache.Config{o.namespace: {}}
	}
	probeAddr := o.healthzAddress
	if probeAddr == "" {
		probeAddr = "0" // disabled
	}
	mgr, err := ctrl.NewManager(util.RestConfigWithUserAgent(restCfg, "cainjector"), ctrl.Options{
		Scheme: scheme,
		Cache: cache.Options{
			ReaderFailOnMissingInformer: true,
			DefaultNamespaces:           defaultNamespaces,
		},
		// The injectors watch Secrets metadata-only; reading a Secret's data
		// must go straight to the API server rather than a (missing) full
		// Secret informer.
		Client: client.Options{
			Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}}},
		},
		LeaderElection:         false,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: probeAddr,
	})
	if err != nil {
		return fmt.Errorf("creating controller manager: %w", err)
	}
	if o.healthzAddress != "" {
		if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
			return err
		}
		if err := mgr.AddReadyzCheck("informers", func(req *http.Request) error {
			waitCtx, cancel := context.WithTimeout(req.Context(), 200*time.Millisecond)
			defer cancel()
			if !mgr.GetCache().WaitForCacheSync(waitCtx) {
				return errors.New("informer caches not synced")
			}
			return nil
		}); err != nil {
			return err
		}
	}

	enabled := map[string]bool{}
	for _, k := range o.injectables {
		enabled[k] = true
	}
	if err := cainjector.RegisterAllInjectors(ctx, mgr, cainjector.SetupOptions{
		Namespace:                    o.namespace,
		EnableCertificatesDataSource: o.enableCertificatesDataSource,
		EnabledReconcilersFor:        enabled,
	}); err != nil {
		return fmt.Errorf("registering injectors: %w", err)
	}

	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("running manager: %w", err)
	}
	log.Info("shut down")
	return nil
}
