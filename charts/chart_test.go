// Package charts_test checks the Helm chart: that it agrees with config/ and
// the Makefile, that its schema refuses nonsense, that helm lint and its
// helm-unittest suites pass, and that it installs, upgrades and uninstalls
// on a real kube-apiserver. helm and helm-unittest are built from Go module
// sources by hack/tools.sh; the API server by hack/envtest-binaries.sh.
package charts_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"
)

const chart = "comet-operator"

func tool(t *testing.T, name string) string {
	t.Helper()
	out, err := exec.Command("../hack/tools.sh", name).Output()
	if err != nil {
		t.Fatalf("building %s: %v", name, err)
	}
	return strings.TrimSpace(string(out))
}

// run runs a command and returns its combined output and error.
func run(name string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}

// render runs helm template and returns the documents of the given kind.
func render(t *testing.T, helm, kind string, args ...string) []map[string]any {
	t.Helper()
	out, err := run(helm, append([]string{"template", "comet", chart, "--namespace", "comet-system"}, args...)...)
	if err != nil {
		t.Fatalf("helm template: %v\n%s", err, out)
	}
	var docs []map[string]any
	for _, d := range strings.Split(out, "\n---\n") {
		var m map[string]any
		if err := yaml.Unmarshal([]byte(d), &m); err != nil {
			t.Fatalf("rendered YAML: %v", err)
		}
		if m != nil && m["kind"] == kind {
			docs = append(docs, m)
		}
	}
	return docs
}

func readYAML(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func TestCRDMatchesConfig(t *testing.T) {
	helm := tool(t, "helm")
	crds := render(t, helm, "CustomResourceDefinition")
	if len(crds) != 1 {
		t.Fatalf("%d CRDs rendered", len(crds))
	}
	want := readYAML(t, "../config/crd/bases/comet.cometop.dev_cometservers.yaml")
	if fmt.Sprint(crds[0]["spec"]) != fmt.Sprint(want["spec"]) {
		t.Fatal("the chart's CRD differs from config/crd: run make manifests")
	}
	if len(render(t, helm, "CustomResourceDefinition", "--set", "crd.enabled=false")) != 0 {
		t.Fatal("crd.enabled=false still renders the CRD")
	}
}

func TestRBACMatchesConfig(t *testing.T) {
	helm := tool(t, "helm")
	want := fmt.Sprint(readYAML(t, "../config/rbac/role.yaml")["rules"])
	var found bool
	for _, cr := range render(t, helm, "ClusterRole") {
		if cr["metadata"].(map[string]any)["name"] == "comet-comet-operator-manager" {
			found = true
			if fmt.Sprint(cr["rules"]) != want {
				t.Fatal("the chart's manager rules differ from config/rbac/role.yaml: run make manifests")
			}
		}
	}
	if !found {
		t.Fatal("no manager ClusterRole")
	}
	// Namespaced mode: no cluster-wide exec.
	for _, cr := range render(t, helm, "ClusterRole", "--set", "watchNamespaces={team-a}") {
		if strings.Contains(fmt.Sprint(cr["rules"]), "pods/exec") {
			t.Fatalf("ClusterRole %v grants pods/exec in namespaced mode", cr["metadata"])
		}
	}
	if roles := render(t, helm, "Role", "--set", "watchNamespaces={team-a}"); !strings.Contains(fmt.Sprint(roles), "pods/exec") {
		t.Fatal("no Role grants pods/exec in the watched namespace")
	}
}

func TestLintAndUnitTests(t *testing.T) {
	if out, err := run(tool(t, "helm"), "lint", "--strict", chart); err != nil {
		t.Fatalf("helm lint: %v\n%s", err, out)
	}
	out, err := run(tool(t, "helm-unittest"), chart)
	if err != nil || !regexp.MustCompile(`Tests:\s+\d+ passed, \d+ total`).MatchString(out) {
		t.Fatalf("helm-unittest: %v\n%s", err, out)
	}
}

func TestSchemaRefusesNonsense(t *testing.T) {
	helm := tool(t, "helm")
	for set, want := range map[string]string{
		"replicaCount=two":          "at '/replicaCount': got string, want integer",
		"replicas=1":                "additional properties 'replicas' not allowed",
		"push.timeout=soon":         "at '/push/timeout'",
		"push.concurrency=0":        "at '/push/concurrency'",
		"logLevel=loud":             "at '/logLevel'",
		"image.pullPolicy=Sometime": "at '/image/pullPolicy'",
		"watchNamespaces[0]=A_B":    "at '/watchNamespaces/0'",
		"crd.keep=maybe":            "at '/crd/keep': got string, want boolean",
		"metrics.serviceMonitor.x=": "additional properties 'x' not allowed",
	} {
		out, err := run(helm, "template", "comet", chart, "--set", set)
		if err == nil || !strings.Contains(out, want) {
			t.Errorf("--set %s: %v\n%s\nwant an error with %q", set, err, out, want)
		}
	}
}

// The Makefile is the one place for the version and the image names.
func TestDefaultsMatchMakefile(t *testing.T) {
	mk, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	variable := func(name string) string {
		m := regexp.MustCompile(`(?m)^` + name + `\s*\?=\s*(\S+)$`).FindSubmatch(mk)
		if m == nil {
			t.Fatalf("no %s in the Makefile", name)
		}
		return string(m[1])
	}
	version, repo := variable("VERSION"), variable("IMAGE_REPO")
	meta := readYAML(t, chart+"/Chart.yaml")
	values := readYAML(t, chart+"/values.yaml")
	if meta["appVersion"] != version || meta["version"] != version {
		t.Errorf("Chart.yaml version %v, appVersion %v; Makefile VERSION %s", meta["version"], meta["appVersion"], version)
	}
	if got := values["image"].(map[string]any)["repository"]; got != repo+"/comet-operator" {
		t.Errorf("image.repository %v, want %s/comet-operator", got, repo)
	}
	if got := values["cometserverImage"].(map[string]any)["repository"]; got != repo+"/cometserver" {
		t.Errorf("cometserverImage.repository %v, want %s/cometserver", got, repo)
	}
}

func TestValuesTableInREADME(t *testing.T) {
	out, err := run("go", "run", "../hack/values-table", "-values", chart+"/values.yaml", "-check", "../README.md")
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// TestInstallUpgradeUninstall installs the chart with helm into a real
// kube-apiserver. It has no kubelet or controllers, so nothing runs: this
// proves the objects are accepted, the CRD is established and serves, and
// the release upgrades and uninstalls as documented.
func TestInstallUpgradeUninstall(t *testing.T) {
	helm := tool(t, "helm")
	assets := os.Getenv("KUBEBUILDER_ASSETS")
	if assets == "" {
		out, err := exec.Command("../hack/envtest-binaries.sh").Output()
		if err != nil {
			t.Fatalf("building the envtest binaries: %v", err)
		}
		assets = strings.TrimSpace(string(out))
	}
	env := &envtest.Environment{BinaryAssetsDirectory: assets}
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer env.Stop()
	admin, err := env.AddUser(envtest.User{Name: "helm", Groups: []string{"system:masters"}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	kc, err := admin.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(kubeconfig, kc, 0o600)
	helmRun := func(args ...string) string {
		t.Helper()
		out, err := run(helm, append(args, "--kubeconfig", kubeconfig)...)
		if err != nil {
			t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return out
	}

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(apiextensionsv1.AddToScheme(scheme))
	k8s, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	ns := "comet-system"
	key := func(name string) types.NamespacedName { return types.NamespacedName{Namespace: ns, Name: name} }

	helmRun("install", "comet", chart, "--namespace", ns, "--create-namespace")

	var crd apiextensionsv1.CustomResourceDefinition
	waitFor(t, "the CRD to be established", func() error {
		if err := k8s.Get(ctx, types.NamespacedName{Name: "cometservers.comet.cometop.dev"}, &crd); err != nil {
			return err
		}
		for _, c := range crd.Status.Conditions {
			if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
				return nil
			}
		}
		return fmt.Errorf("not established")
	})
	var dep appsv1.Deployment
	for name, obj := range map[string]client.Object{
		"comet-comet-operator": &dep, "comet-comet-operator-metrics": &corev1.Service{}, "comet-comet-operator-leader-election": &rbacv1.Role{},
	} {
		if err := k8s.Get(ctx, key(name), obj); err != nil {
			t.Fatalf("%T %s: %v", obj, name, err)
		}
	}
	if err := k8s.Get(ctx, key("comet-comet-operator"), &corev1.ServiceAccount{}); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Get(ctx, types.NamespacedName{Name: "comet-comet-operator-manager"}, &rbacv1.ClusterRole{}); err != nil {
		t.Fatal(err)
	}
	args := strings.Join(dep.Spec.Template.Spec.Containers[0].Args, " ")
	if !strings.Contains(args, "--cometserver-image=ghcr.io/cometop/cometserver:0.1.0") {
		t.Fatalf("manager args %s", args)
	}

	// A sample CometServer is accepted, and the CRD's defaults apply.
	sample := &unstructured.Unstructured{}
	b, _ := os.ReadFile("../config/samples/comet_v1alpha1_cometserver.yaml")
	if err := yaml.Unmarshal(b, &sample.Object); err != nil {
		t.Fatal(err)
	}
	sample.SetNamespace("default")
	waitFor(t, "the sample to be accepted", func() error { return k8s.Create(ctx, sample) })

	// The CRD is a template, so upgrades manage it (a crds/ folder never would).
	if !strings.Contains(helmRun("get", "manifest", "comet", "--namespace", ns), "kind: CustomResourceDefinition") {
		t.Fatal("the CRD is not part of the release")
	}
	helmRun("upgrade", "comet", chart, "--namespace", ns, "--set", "push.concurrency=9", "--set", "watchNamespaces={default}")
	if err := k8s.Get(ctx, key("comet-comet-operator"), &dep); err != nil {
		t.Fatal(err)
	}
	args = strings.Join(dep.Spec.Template.Spec.Containers[0].Args, " ")
	if !strings.Contains(args, "--push-concurrency=9") || !strings.Contains(args, "--watch-namespaces=default") {
		t.Fatalf("upgrade did not reach the deployment: %s", args)
	}
	if err := k8s.Get(ctx, types.NamespacedName{Namespace: "default", Name: "comet-comet-operator-manager"}, &rbacv1.Role{}); err != nil {
		t.Fatalf("namespaced mode: %v", err)
	}
	err = k8s.Get(ctx, types.NamespacedName{Name: "comet-comet-operator-manager"}, &rbacv1.ClusterRole{})
	if !apierrors.IsNotFound(err) {
		t.Fatalf("the cluster-wide manager role outlived the switch to namespaced mode: %v", err)
	}

	helmRun("uninstall", "comet", "--namespace", ns)
	waitFor(t, "the workload to be gone", func() error {
		if err := k8s.Get(ctx, key("comet-comet-operator"), &appsv1.Deployment{}); !apierrors.IsNotFound(err) {
			return fmt.Errorf("deployment still there: %v", err)
		}
		return nil
	})
	if err := k8s.Get(ctx, types.NamespacedName{Name: crd.Name}, &crd); err != nil {
		t.Fatalf("the CRD was not kept: %v", err)
	}
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(sample), sample); err != nil {
		t.Fatalf("the CometServer did not survive the uninstall: %v", err)
	}
}

func waitFor(t *testing.T, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
