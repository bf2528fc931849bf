// Command kube-crd-apiserver is a real Kubernetes API server for custom resources, for the tests.
//
// It exists because no Kubernetes cluster can run where the tests run (no Docker, no kind) and
// k8s.io/kubernetes cannot be `go install`ed (its go.mod has replace directives), while the
// project's KServe rollout code (components/deploy) should be tested against real API semantics:
// CRD schema validation, pruning of unknown fields, JSON merge patch, resourceVersion conflicts,
// generation bumps and the status subresource. So this program embeds etcd
// (go.etcd.io/etcd/server/v3/embed) and runs the apiextensions-apiserver
// (k8s.io/apiextensions-apiserver, a published module) in one process: it serves
// apiextensions.k8s.io (CustomResourceDefinitions) and the custom resources they define, and no
// core kinds (no namespaces, no secrets).
//
// It listens on 127.0.0.1 only, over HTTPS with a self-signed certificate kept in the data dir,
// with anonymous authentication, an always-allow authorizer and no admission plugins (so
// namespaced custom resources need no Namespace object). It writes a kubeconfig (with the CA) to
// --kubeconfig-out, then prints one line "ready <url>" on stdout; SIGTERM or SIGINT stop it
// cleanly. Not for anything but tests: anyone who can reach the port can do anything.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	extensionsapiserver "k8s.io/apiextensions-apiserver/pkg/apiserver"
	"k8s.io/apiextensions-apiserver/pkg/cmd/server/options"
	generatedopenapi "k8s.io/apiextensions-apiserver/pkg/generated/openapi"
	"k8s.io/apiserver/pkg/authentication/request/anonymous"
	openapinamer "k8s.io/apiserver/pkg/endpoints/openapi"
	genericapiserver "k8s.io/apiserver/pkg/server"
	"k8s.io/apiserver/pkg/util/openapi"
	"k8s.io/apiserver/pkg/util/webhook"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	netutils "k8s.io/utils/net"

	noopoteltrace "go.opentelemetry.io/otel/trace/noop"
)

func main() {
	dataDir := flag.String("data-dir", "", "directory for etcd's data and the serving certificate (required)")
	kubeconfigOut := flag.String("kubeconfig-out", "", "where to write a kubeconfig for the server (required)")
	port := flag.Int("port", 0, "HTTPS port on 127.0.0.1 (0: pick a free one)")
	flag.Parse()
	if *dataDir == "" || *kubeconfigOut == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, *dataDir, *kubeconfigOut, *port); err != nil {
		fmt.Fprintln(os.Stderr, "kube-crd-apiserver:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, dataDir, kubeconfigOut string, port int) error {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return err
	}
	etcdURL, closeEtcd, err := startEtcd(filepath.Join(dataDir, "etcd"))
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	defer closeEtcd()

	listener, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", fmt.Sprint(port)))
	if err != nil {
		return err
	}
	serverURL := "https://" + listener.Addr().String()

	o := options.NewCustomResourceDefinitionsServerOptions(os.Stdout, os.Stderr)
	o.RecommendedOptions.Etcd.StorageConfig.Transport.ServerList = []string{etcdURL}
	o.RecommendedOptions.SecureServing.Listener = listener
	o.RecommendedOptions.SecureServing.BindAddress = netutils.ParseIPSloppy("127.0.0.1")
	o.RecommendedOptions.SecureServing.BindPort = listener.Addr().(*net.TCPAddr).Port
	o.RecommendedOptions.SecureServing.ExternalAddress = netutils.ParseIPSloppy("127.0.0.1")
	o.RecommendedOptions.SecureServing.ServerCert.CertDirectory = filepath.Join(dataDir, "certs")
	// No kube-apiserver to delegate to: authentication is set to anonymous below, a nil
	// Authorization becomes always-allow, and nothing needs core informers (no admission
	// plugins, no priority and fairness, no audit webhooks).
	o.RecommendedOptions.Authentication = nil
	o.RecommendedOptions.Authorization = nil
	o.RecommendedOptions.CoreAPI = nil
	o.RecommendedOptions.Admission = nil
	o.RecommendedOptions.Features.EnablePriorityAndFairness = false
	if err := o.ServerRunOptions.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	if err := o.Complete(); err != nil {
		return err
	}
	if err := o.Validate(); err != nil {
		return err
	}
	config, err := serverConfig(o)
	if err != nil {
		return err
	}
	server, err := config.Complete().New(genericapiserver.NewEmptyDelegate())
	if err != nil {
		return err
	}

	serveCtx, cancelServe := context.WithCancel(ctx)
	defer cancelServe()
	errCh := make(chan error, 1)
	go func() { errCh <- server.GenericAPIServer.PrepareRun().RunWithContext(serveCtx) }()

	if err := waitReady(ctx, server.GenericAPIServer.LoopbackClientConfig, errCh); err != nil {
		cancelServe()
		<-errCh
		return err
	}
	caFile := o.RecommendedOptions.SecureServing.ServerCert.CertKey.CertFile
	if err := writeKubeconfig(kubeconfigOut, serverURL, caFile); err != nil {
		cancelServe()
		<-errCh
		return err
	}
	fmt.Printf("ready %s\n", serverURL)
	if err := <-errCh; err != nil {
		return err
	}
	return nil
}

// serverConfig is options.Config() minus the parts that need a kube-apiserver: the services
// lister (only for conversion webhooks) and delegated authentication.
func serverConfig(o *options.CustomResourceDefinitionsServerOptions) (*extensionsapiserver.Config, error) {
	if err := o.RecommendedOptions.SecureServing.MaybeDefaultWithSelfSignedCerts(
		"localhost", nil, []net.IP{netutils.ParseIPSloppy("127.0.0.1")}); err != nil {
		return nil, fmt.Errorf("self-signed certificates: %w", err)
	}
	sc := genericapiserver.NewRecommendedConfig(extensionsapiserver.Codecs)
	if err := o.ServerRunOptions.ApplyTo(&sc.Config); err != nil {
		return nil, err
	}
	if err := o.RecommendedOptions.ApplyTo(sc); err != nil {
		return nil, err
	}
	if err := o.APIEnablement.ApplyTo(&sc.Config, extensionsapiserver.DefaultAPIResourceConfigSource(), extensionsapiserver.Scheme); err != nil {
		return nil, err
	}
	// Anonymous requests are user system:anonymous; genericapiserver adds the loopback token in
	// front of it (AuthorizeClientBearerToken) when the config is completed.
	sc.Authentication.Authenticator = anonymous.NewAuthenticator(nil)
	// An informer factory nothing registers with: it is started but lists nothing.
	sc.SharedInformerFactory = informers.NewSharedInformerFactory(kubernetes.NewForConfigOrDie(sc.LoopbackClientConfig), 0)

	getDefs := openapi.GetOpenAPIDefinitionsWithoutDisabledFeatures(generatedopenapi.GetOpenAPIDefinitions)
	sc.OpenAPIConfig = genericapiserver.DefaultOpenAPIConfig(getDefs, openapinamer.NewDefinitionNamer(extensionsapiserver.Scheme))
	sc.OpenAPIV3Config = genericapiserver.DefaultOpenAPIV3Config(getDefs, openapinamer.NewDefinitionNamer(extensionsapiserver.Scheme, scheme.Scheme))
	return &extensionsapiserver.Config{
		GenericConfig: sc,
		ExtraConfig: extensionsapiserver.ExtraConfig{
			CRDRESTOptionsGetter: options.NewCRDRESTOptionsGetter(*o.RecommendedOptions.Etcd, sc.ResourceTransformers, sc.StorageObjectCountTracker),
			ServiceResolver:      noServices{},
			AuthResolverWrapper:  webhook.NewDefaultAuthenticationInfoResolverWrapper(nil, nil, sc.LoopbackClientConfig, noopoteltrace.NewTracerProvider()),
		},
	}, nil
}

// noServices resolves no service: conversion webhooks are not supported.
type noServices struct{}

func (noServices) ResolveEndpoint(namespace, name string, _ int32) (*url.URL, error) {
	return nil, fmt.Errorf("service %s/%s: no core API here, conversion webhooks are not supported", namespace, name)
}

// startEtcd runs a single-member etcd on free loopback ports and returns its client URL.
func startEtcd(dir string) (string, func(), error) {
	clientPort, err := freePort()
	if err != nil {
		return "", nil, err
	}
	peerPort, err := freePort()
	if err != nil {
		return "", nil, err
	}
	cfg := embed.NewConfig()
	cfg.Dir = dir
	cfg.LogLevel = "error"
	cfg.UnsafeNoFsync = true // throwaway test data
	clientURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", clientPort)}
	peerURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", peerPort)}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{clientURL}, []url.URL{clientURL}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peerURL}, []url.URL{peerURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return "", nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return "", nil, err
	case <-time.After(60 * time.Second):
		e.Close()
		return "", nil, errors.New("not ready after 60s")
	}
	return clientURL.String(), e.Close, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitReady polls /readyz (all post-start hooks done, CRD informers synced) with the loopback client.
func waitReady(ctx context.Context, loopback *rest.Config, errCh <-chan error) error {
	client, err := rest.HTTPClientFor(loopback)
	if err != nil {
		return err
	}
	deadline := time.After(2 * time.Minute)
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, loopback.Host+"/readyz", nil)
		if err != nil {
			return err
		}
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case err := <-errCh:
			return fmt.Errorf("server stopped before it was ready: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline:
			return errors.New("/readyz not ok after 2 minutes")
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func writeKubeconfig(path, serverURL, caFile string) error {
	ca, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kube-crd-apiserver"] = &clientcmdapi.Cluster{Server: serverURL, CertificateAuthorityData: ca}
	cfg.AuthInfos["anonymous"] = &clientcmdapi.AuthInfo{}
	cfg.Contexts["kube-crd-apiserver"] = &clientcmdapi.Context{Cluster: "kube-crd-apiserver", AuthInfo: "anonymous"}
	cfg.CurrentContext = "kube-crd-apiserver"
	tmp := path + ".tmp"
	if err := clientcmd.WriteToFile(*cfg, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
