//go:build e2e

// Package e2e runs the operator on the real single-node cluster of
// hack/local-cluster, installed with its Helm chart and images, and drives it
// as a user would: helm, kubectl, and HTTP from the host through the Service.
// hack/e2e.sh brings the cluster up, runs this, and tears it down.
package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

var (
	kubectlBin = os.Getenv("KUBECTL")
	helmBin    = os.Getenv("HELM")
	repoRoot   = "../.."
	ns         = "e2e"
	opNS       = "comet-system"
	figures    []string // latencies, printed at the end for the notes
)

func TestMain(m *testing.M) {
	if kubectlBin == "" || helmBin == "" || os.Getenv("KUBECONFIG") == "" {
		fmt.Fprintln(os.Stderr, "e2e: run through hack/e2e.sh (KUBECTL, HELM and KUBECONFIG unset)")
		os.Exit(1)
	}
	code := m.Run()
	fmt.Println("e2e figures:")
	for _, f := range figures {
		fmt.Println("  " + f)
	}
	os.Exit(code)
}

func figure(t *testing.T, format string, a ...any) {
	t.Helper()
	s := fmt.Sprintf(format, a...)
	t.Log(s)
	figures = append(figures, s)
}

func sh(t *testing.T, bin string, args ...string) string {
	t.Helper()
	out, err := shErr(bin, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", bin, strings.Join(args, " "), err, out)
	}
	return out
}

func shErr(bin string, args ...string) (string, error) {
	var out bytes.Buffer
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return strings.TrimSpace(out.String()), err
}

func kubectl(t *testing.T, args ...string) string { t.Helper(); return sh(t, kubectlBin, args...) }

// eventually polls cond every 100ms until it holds or timeout passes.
func eventually(t *testing.T, what string, timeout time.Duration, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	var err error
	for time.Since(start) < timeout {
		if err = cond(); err == nil {
			return time.Since(start)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s: %v", timeout, what, err)
	return 0
}

func jsonpath(t *testing.T, kind, name, path string) string {
	t.Helper()
	out, _ := shErr(kubectlBin, "-n", ns, "get", kind, name, "-o", "jsonpath="+path)
	return out
}

func condition(t *testing.T, typ string) string {
	return jsonpath(t, "cometserver", "news", `{.status.conditions[?(@.type=="`+typ+`")].status}`)
}

func waitConverged(t *testing.T, what string) {
	t.Helper()
	eventually(t, what, 3*time.Minute, func() error {
		gen := jsonpath(t, "cometserver", "news", "{.metadata.generation}")
		obs := jsonpath(t, "cometserver", "news", "{.status.observedGeneration}")
		if gen != obs || condition(t, "Available") != "True" || condition(t, "ConfigApplied") != "True" {
			return fmt.Errorf("generation %s observed %s, Available %s, ConfigApplied %s",
				gen, obs, condition(t, "Available"), condition(t, "ConfigApplied"))
		}
		return nil
	})
}

func patch(t *testing.T, spec string) {
	t.Helper()
	kubectl(t, "-n", ns, "patch", "cometserver", "news", "--type=merge", "-p", `{"spec":`+spec+`}`)
}

// waitSolePod waits until the CometServer has exactly one pod, ready, other
// than not: a terminating pod serves until its SIGTERM arrives, and with no
// other ready endpoint kube-proxy still sends it traffic, so a step that
// talks through the Service must wait for the old pod to be gone.
func waitSolePod(t *testing.T, not string) string {
	t.Helper()
	var name string
	eventually(t, "a sole ready pod", 3*time.Minute, func() error {
		all, ready := pods(t)
		if len(all) != 1 || len(ready) != 1 || ready[0] == not {
			return fmt.Errorf("pods %v, ready %v", all, ready)
		}
		name = ready[0]
		return nil
	})
	return name
}

// readyPods lists the comet server pods that are ready and not terminating.
func readyPods(t *testing.T) []string {
	_, ready := pods(t)
	return ready
}

// pods lists every comet server pod, terminating ones too, and the ready ones.
func pods(t *testing.T) (all, ready []string) { return podsOf(ns, "news") }

// podsOf lists the pods of one CometServer, terminating ones too, and the
// ready ones among them that are not terminating.
func podsOf(namespace, instance string) (all, ready []string) {
	out, err := shErr(kubectlBin, "-n", namespace, "get", "pods", "-l", "app.kubernetes.io/instance="+instance, "-o", "json")
	if err != nil {
		return nil, nil
	}
	var list struct {
		Items []struct {
			Metadata struct {
				Name              string
				DeletionTimestamp *string
			}
			Status struct {
				Conditions []struct{ Type, Status string }
			}
		}
	}
	if json.Unmarshal([]byte(out), &list) != nil {
		return nil, nil
	}
	for _, p := range list.Items {
		all = append(all, p.Metadata.Name)
		for _, c := range p.Status.Conditions {
			if c.Type == "Ready" && c.Status == "True" && p.Metadata.DeletionTimestamp == nil {
				ready = append(ready, p.Metadata.Name)
			}
		}
	}
	return all, ready
}

type endpoints struct{ client, publisher, token string }

func service(t *testing.T) endpoints {
	t.Helper()
	ip := jsonpath(t, "service", "news", "{.spec.clusterIP}")
	pubIP := jsonpath(t, "service", "news-publisher", "{.spec.clusterIP}")
	tok := jsonpath(t, "secret", "news-publisher-token", "{.data.token}")
	raw, err := decodeBase64(tok)
	if err != nil || ip == "" || pubIP == "" {
		t.Fatalf("services %q %q token %q: %v", ip, pubIP, tok, err)
	}
	return endpoints{client: "http://" + ip + ":8080/comet", publisher: "http://" + pubIP + ":8081", token: raw}
}

// httpClient opens a connection per request: a kept-alive one would stay
// pinned, through the Service's connection tracking, to a pod that is going
// away. Dials time out fast, so a retry reaches the new pod as soon as
// kube-proxy has caught up (about a second after a pod change).
var httpClient = &http.Client{
	Timeout: 90 * time.Second,
	Transport: &http.Transport{
		DialContext:       (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
		DisableKeepAlives: true,
	},
}

func (e endpoints) publish(method, path, body string) (int, string, error) {
	req, _ := http.NewRequest(method, e.publisher+path, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+e.token)
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}

// poll sends a long poll as a browser's XMLHttpRequest would.
func (e endpoints) poll(ids ...string) (int, string, time.Duration, error) {
	var esc []string
	for _, id := range ids {
		esc = append(esc, jsEscape(id))
	}
	return e.pollBody("registration=" + strings.Join(esc, "%0A"))
}

// pollBody sends a long poll with a body of the caller's.
func (e endpoints) pollBody(body string) (int, string, time.Duration, error) {
	req, _ := http.NewRequest("POST", e.client, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/x-ocsigen-comet; charset=UTF-8")
	req.Header.Set("Origin", "http://localhost")
	start := time.Now()
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, "", 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), time.Since(start), nil
}

type pollResult struct {
	code int
	body string
	took time.Duration
	err  error
}

func (e endpoints) pollAsync(ids ...string) <-chan pollResult {
	c := make(chan pollResult, 1)
	go func() {
		code, body, took, err := e.poll(ids...)
		c <- pollResult{code, body, took, err}
	}()
	return c
}

func (e endpoints) createChannel(t *testing.T, name string) string {
	t.Helper()
	var id string
	eventually(t, "the publisher through the service", 30*time.Second, func() error {
		code, body, err := e.publish("POST", "/v1/channels", `{"name":"`+name+`"}`)
		if err != nil || code != 201 {
			return fmt.Errorf("%d %s %v", code, body, err)
		}
		var r struct{ ID string }
		json.Unmarshal([]byte(body), &r)
		id = r.ID
		return nil
	})
	return id
}

// listening waits, up to d, for n polls to wait on channel.
func (e endpoints) listening(channel string, n int, d time.Duration) error {
	var err error
	for start := time.Now(); time.Since(start) < d; time.Sleep(100 * time.Millisecond) {
		var code int
		var body string
		code, body, err = e.publish("GET", "/v1/channels/"+urlPathEscape(channel), "")
		if err == nil && code == 200 && strings.Contains(body, fmt.Sprintf(`"listeners":%d`, n)) {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("%d %s", code, body)
		}
	}
	return err
}

func (e endpoints) waitWaiting(t *testing.T, channel string, n int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d listeners on %s", n, channel), 30*time.Second, func() error {
		code, body, err := e.publish("GET", "/v1/channels/"+urlPathEscape(channel), "")
		if err != nil || code != 200 || !strings.Contains(body, fmt.Sprintf(`"listeners":%d`, n)) {
			return fmt.Errorf("%d %s %v", code, body, err)
		}
		return nil
	})
}

// adminCommands reads a pod's count of live-state commands from its
// metrics (through kubectl, as the publisher port is the pod's).
func adminCommands(t *testing.T, e endpoints) map[string]int {
	t.Helper()
	var body string
	eventually(t, "the pod's metrics", 30*time.Second, func() error {
		code, b, err := e.publish("GET", "/metrics", "")
		if err == nil && code != 200 {
			err = fmt.Errorf("status %d", code)
		}
		body = b
		return err
	})
	counts := map[string]int{}
	re := regexp.MustCompile(`(?m)^comet_admin_commands_total\{command="(\w+)",result="ok"\} (\d+)$`)
	for _, m := range re.FindAllStringSubmatch(body, -1) {
		n, _ := strconv.Atoi(m[2])
		counts[m[1]] = n
	}
	return counts
}

// diagnose prints what a person would look at first when a step failed.
func diagnose(t *testing.T) {
	if !t.Failed() {
		return
	}
	for _, args := range [][]string{
		{"get", "pods", "-A", "-o", "wide"},
		{"get", "events", "-A", "--sort-by=.lastTimestamp"},
		{"-n", ns, "get", "cometserver", "news", "-o", "yaml"},
		{"-n", ns, "logs", "-l", "app.kubernetes.io/instance=news", "--tail=40", "--all-containers", "--prefix"},
		{"-n", ns, "logs", "-l", "app.kubernetes.io/instance=news", "--previous", "--tail=40", "--prefix"},
		{"-n", opNS, "logs", "deployment/comet-comet-operator", "--tail=60"},
	} {
		out, _ := shErr(kubectlBin, args...)
		t.Logf("kubectl %s:\n%s", strings.Join(args, " "), out)
	}
}

func TestEndToEnd(t *testing.T) {
	t.Cleanup(func() { diagnose(t) })
	chart := repoRoot + "/charts/comet-operator"
	// Each step builds on the ones before: stop at the first that fails.
	step := func(name string, f func(t *testing.T)) {
		t.Helper()
		if !t.Failed() && !t.Run(name, f) {
			t.FailNow()
		}
	}
	step("helm install", func(t *testing.T) {
		start := time.Now()
		sh(t, helmBin, "install", "comet", chart, "--namespace", opNS, "--create-namespace",
			"--set", "push.resyncPeriod=10s", "--set", "push.retryPeriod=2s", "--wait", "--timeout", "3m")
		figure(t, "helm install --wait: %s", time.Since(start).Round(time.Millisecond))
	})

	step("a sample CometServer becomes Available", func(t *testing.T) {
		kubectl(t, "create", "namespace", ns)
		start := time.Now()
		kubectl(t, "-n", ns, "apply", "-f", repoRoot+"/config/samples/comet_v1alpha1_cometserver.yaml")
		waitConverged(t, "Available and ConfigApplied")
		figure(t, "CometServer apply to Available: %s", time.Since(start).Round(time.Millisecond))
		if out := kubectl(t, "-n", ns, "get", "comet", "news"); !strings.Contains(out, "True") {
			t.Fatalf("kubectl get comet:\n%s", out)
		}
	})

	step("scale to 0 and back", func(t *testing.T) {
		kubectl(t, "-n", ns, "scale", "comet/news", "--replicas=0")
		eventually(t, "no pods at all", 2*time.Minute, func() error {
			if all, _ := pods(t); len(all) > 0 || jsonpath(t, "cometserver", "news", "{.status.replicas}") != "0" {
				return fmt.Errorf("pods %v", all)
			}
			return nil
		})
		kubectl(t, "-n", ns, "scale", "comet/news", "--replicas=1")
		waitConverged(t, "back to one pod")
		waitSolePod(t, "")
	})

	e := service(t)
	step("publish and long-poll from the host through the service", func(t *testing.T) {
		id := e.createChannel(t, "news/e2e-1") // ASCII: escape() cannot carry UTF-8
		// Right after the scale, kube-proxy may still route a first
		// connection to the pod that left: poll again until one waits.
		var c <-chan pollResult
		eventually(t, "a poll waiting through the service", time.Minute, func() error {
			c = e.pollAsync(id)
			return e.listening(id, 1, 5*time.Second)
		})
		code, body, err := e.publish("POST", "/v1/channels/"+urlPathEscape(id)+"/messages", "hello, world: 1")
		written := regexp.MustCompile(`^\{"delivered":1,"failed":0,"position":"1\.([A-Za-z0-9_-]+)"\}\n$`).FindStringSubmatch(body)
		if err != nil || code != 200 || written == nil {
			t.Fatalf("publish: %d %q %v", code, body, err)
		}
		r := <-c
		if r.err != nil || r.code != 200 || r.body != "news/e2e-1:hello%2C%20world%3A%201" {
			t.Fatalf("poll: %d %q %v", r.code, r.body, r.err)
		}

		// Written while nobody polls: kept in the pod's history, and given
		// at once to a poll that resumes from the first message.
		epoch := written[1]
		if code, body, err := e.publish("POST", "/v1/channels/"+urlPathEscape(id)+"/messages", "two"); err != nil || code != 200 ||
			body != `{"delivered":0,"failed":0,"position":"2.`+epoch+`"}`+"\n" {
			t.Fatalf("publish between polls: %d %q %v", code, body, err)
		}
		code, body, took, err := e.pollBody("registration=" + jsEscape(id) + "&resume=" + jsEscape(id+":1."+epoch))
		if err != nil || code != 200 || body != "news/e2e-1:two\nnews/e2e-1:@2."+epoch || took > 5*time.Second {
			t.Fatalf("resuming poll: %d %q after %v, %v", code, body, took, err)
		}
		t.Logf("a resuming poll answered from the history: %v", took)
	})

	step("deactivate and activate live", func(t *testing.T) {
		e.createChannel(t, "live")
		waiting := e.pollAsync("live")
		e.waitWaiting(t, "live", 1)
		start := time.Now()
		patch(t, `{"activated":false}`)
		r := <-waiting
		if r.code != 503 {
			t.Fatalf("waiting poll after deactivate: %d %v", r.code, r.err)
		}
		figure(t, "activated=false to a waiting poll's 503: %s", time.Since(start).Round(time.Millisecond))
		eventually(t, "new polls answered 503", 30*time.Second, func() error {
			if code, _, _, _ := e.poll("live"); code != 503 {
				return fmt.Errorf("status %d", code)
			}
			return nil
		})
		figure(t, "activated=false to every new poll 503: %s", time.Since(start).Round(time.Millisecond))
		start = time.Now()
		patch(t, `{"activated":true}`)
		eventually(t, "polls served again", 30*time.Second, func() error {
			if code, _, _, _ := e.poll("gone"); code != 200 {
				return fmt.Errorf("status %d", code)
			}
			return nil
		})
		figure(t, "activated=true to polls served: %s", time.Since(start).Round(time.Millisecond))
		waitConverged(t, "activated again")
	})

	step("retime, then retime with KILL", func(t *testing.T) {
		patch(t, `{"timeout":"3s"}`)
		waitConverged(t, "timeout 3s")
		r := <-e.pollAsync("live")
		if r.code != 200 || r.body != "" || r.took < 2500*time.Millisecond || r.took > 6*time.Second {
			t.Fatalf("a poll under the 3s timeout: %d %q after %s", r.code, r.body, r.took)
		}
		figure(t, "poll under timeout=3s ended after %s", r.took.Round(time.Millisecond))

		patch(t, `{"timeout":"60s"}`)
		waitConverged(t, "timeout 60s")
		waiting := e.pollAsync("live")
		e.waitWaiting(t, "live", 1)
		start := time.Now()
		patch(t, `{"timeout":"50s","killOnTimeoutChange":true}`)
		r = <-waiting
		if r.code != 503 {
			t.Fatalf("waiting poll after a KILL retime: %d %v", r.code, r.err)
		}
		figure(t, "timeout change with killOnTimeoutChange to a waiting poll's 503: %s", time.Since(start).Round(time.Millisecond))
		waitConverged(t, "timeout 50s")
	})

	step("maxVirtualChannels is live and enforced", func(t *testing.T) {
		pod := waitSolePod(t, "")
		var st struct {
			Channels int `json:"channels"`
		}
		if err := json.Unmarshal([]byte(kubectl(t, "-n", ns, "exec", pod, "-c", "comet", "--", "/cometserver", "ctl", "status")), &st); err != nil {
			t.Fatal(err)
		}
		limit := st.Channels + 2
		start := time.Now()
		patch(t, fmt.Sprintf(`{"maxVirtualChannels":%d}`, limit))
		waitConverged(t, "the limit pushed")
		figure(t, "maxVirtualChannels change to ConfigApplied, live: %s", time.Since(start).Round(time.Millisecond))
		if now := waitSolePod(t, ""); now != pod {
			t.Fatalf("pod %s replaced by %s: a live change rolled the pod", pod, now)
		}
		e = service(t)
		var codes []int
		for i := range 3 {
			code, _, err := e.publish("POST", "/v1/channels", fmt.Sprintf(`{"name":"limit-%d"}`, i))
			if err != nil {
				t.Fatal(err)
			}
			codes = append(codes, code)
		}
		if fmt.Sprint(codes) != "[201 201 429]" {
			t.Fatalf("creates under maxVirtualChannels=%d with %d live: %v", limit, st.Channels, codes)
		}
		status := kubectl(t, "-n", ns, "exec", pod, "-c", "comet", "--", "/cometserver", "ctl", "status")
		if !strings.Contains(status, fmt.Sprintf(`"max_virtual_channels":%d`, limit)) {
			t.Fatalf("status %s", status)
		}
	})

	step("a replacement pod comes up in the live state", func(t *testing.T) {
		old := waitSolePod(t, "")
		kubectl(t, "-n", ns, "delete", "pod", old, "--wait=false")
		pod := waitSolePod(t, old)
		status := kubectl(t, "-n", ns, "exec", pod, "-c", "comet", "--", "/cometserver", "ctl", "status")
		if !strings.Contains(status, `"activated":true`) || !strings.Contains(status, `"timeout":50,`) ||
			!strings.Contains(status, `"max_virtual_channels":`+jsonpath(t, "cometserver", "news", "{.spec.maxVirtualChannels}")) {
			t.Fatalf("replacement status %s", status)
		}
		waitConverged(t, "with the replacement")
	})

	step("an operator restart sends no command again", func(t *testing.T) {
		e = service(t)
		before := adminCommands(t, e)
		kubectl(t, "-n", opNS, "rollout", "restart", "deployment/comet-comet-operator")
		kubectl(t, "-n", opNS, "rollout", "status", "deployment/comet-comet-operator", "--timeout=2m")
		start := time.Now()
		var after map[string]int
		// The new operator checks every pod once it leads (it knows none):
		// wait for that check, then compare.
		eventually(t, "the new operator's first check of the pod", time.Minute, func() error {
			after = adminCommands(t, e)
			if after["status"] <= before["status"] {
				return fmt.Errorf("status commands %d, %d before the restart", after["status"], before["status"])
			}
			return nil
		})
		figure(t, "operator restart to its first check of the pod: %s", time.Since(start).Round(time.Millisecond))
		// A wrong push would follow its status read within the same ctl
		// apply, in milliseconds: watch for one over a window 20 times that.
		for watch := time.Now(); time.Since(watch) < 2*time.Second; time.Sleep(100 * time.Millisecond) {
			after = adminCommands(t, e)
			for _, c := range []string{"activate", "deactivate", "set_timeout"} {
				if after[c] != before[c] {
					t.Fatalf("%s: %d before the restart, %d after", c, before[c], after[c])
				}
			}
		}
	})

	step("a change by hand is corrected within the resync period", func(t *testing.T) {
		pod := readyPods(t)[0]
		kubectl(t, "-n", ns, "exec", pod, "-c", "comet", "--", "/cometserver", "ctl", "deactivate")
		start := time.Now()
		eventually(t, "the drift corrected", time.Minute, func() error {
			out, _ := shErr(kubectlBin, "-n", ns, "exec", pod, "-c", "comet", "--", "/cometserver", "ctl", "status")
			if !strings.Contains(out, `"activated":true`) {
				return fmt.Errorf("status %s", out)
			}
			return nil
		})
		figure(t, "hand-made deactivate corrected after %s (resync period 10s)", time.Since(start).Round(time.Millisecond))
	})

	step("a pod with the labels is not exec'd into", func(t *testing.T) {
		kubectl(t, "-n", ns, "run", "intruder", "--image=localhost/comet/pause:local", "--image-pull-policy=Never",
			"--labels=app.kubernetes.io/name=cometserver,app.kubernetes.io/instance=news,app.kubernetes.io/managed-by=comet-operator")
		eventually(t, "the intruder running", time.Minute, func() error {
			if phase := jsonpath(t, "pod", "intruder", "{.status.phase}"); phase != "Running" {
				return fmt.Errorf("phase %q", phase)
			}
			return nil
		})
		// A live change, then a periodic check (resync period 10s): the
		// operator pushes to its pod and checks it again, and would do both
		// to the intruder, where an exec fails and says so.
		before := adminCommands(t, e)["status"]
		patch(t, `{"activated":false}`)
		waitConverged(t, "deactivated")
		eventually(t, "the push and a periodic check of our pod", time.Minute, func() error {
			if n := adminCommands(t, e)["status"]; n < before+3 { // the push reads the status twice, a check once
				return fmt.Errorf("%d status reads since the intruder came", n-before)
			}
			return nil
		})
		out := kubectl(t, "-n", ns, "get", "events.events.k8s.io", "-o", "jsonpath={range .items[*]}{.reason} {.note}{\"\\n\"}{end}")
		for _, line := range strings.Split(out, "\n") {
			if strings.HasPrefix(line, "Push") && strings.Contains(line, "intruder") {
				t.Fatalf("the operator pushed to the intruder: %s", line)
			}
		}
		if names := jsonpath(t, "cometserver", "news", "{.status.pods[*].name}"); strings.Contains(names, "intruder") || len(strings.Fields(names)) != 1 {
			t.Fatalf("status pods %q", names)
		}
		if ready := jsonpath(t, "cometserver", "news", "{.status.readyReplicas}"); ready != "1" {
			t.Fatalf("ready %q: the intruder counted", ready)
		}
		kubectl(t, "-n", ns, "delete", "pod", "intruder", "--wait=false")
		patch(t, `{"activated":true}`)
		waitConverged(t, "activated again")
	})

	step("a LoadBalancer exposes only the client port", func(t *testing.T) {
		patch(t, `{"serviceType":"LoadBalancer"}`)
		eventually(t, "the client service a LoadBalancer", 30*time.Second, func() error {
			if typ := jsonpath(t, "service", "news", "{.spec.type}"); typ != "LoadBalancer" {
				return fmt.Errorf("type %q", typ)
			}
			return nil
		})
		if ports := jsonpath(t, "service", "news", "{.spec.ports[*].port}"); ports != "8080" {
			t.Fatalf("the LoadBalancer has ports %q", ports)
		}
		if typ, ports := jsonpath(t, "service", "news-publisher", "{.spec.type}"), jsonpath(t, "service", "news-publisher", "{.spec.ports[*].port}"); typ != "ClusterIP" || ports != "8081" {
			t.Fatalf("the publisher service: %s %q", typ, ports)
		}
		patch(t, `{"serviceType":"ClusterIP"}`)
	})

	step("a token Secret that does not opt in is refused", func(t *testing.T) {
		kubectl(t, "-n", ns, "create", "secret", "generic", "not-for-comet", "--from-literal=token=db-password")
		patch(t, `{"publisherTokenSecret":"not-for-comet"}`)
		eventually(t, "the Secret refused", 30*time.Second, func() error {
			if reason := jsonpath(t, "cometserver", "news", `{.status.conditions[?(@.type=="PublisherTokenAccepted")].reason}`); reason != "SecretNotOptedIn" {
				return fmt.Errorf("reason %q", reason)
			}
			return nil
		})
		if mounted := jsonpath(t, "deployment", "news", "{.spec.template.spec.volumes[*].secret.secretName}"); mounted != "news-publisher-token" {
			t.Fatalf("the pods mount %q", mounted)
		}
		patch(t, `{"publisherTokenSecret":null}`)
		waitConverged(t, "back to the generated token")
	})

	step("uninstall leaves no workload", func(t *testing.T) {
		kubectl(t, "-n", ns, "delete", "cometserver", "news", "--wait=true", "--timeout=2m")
		sh(t, helmBin, "uninstall", "comet", "--namespace", opNS, "--wait", "--timeout", "2m")
		eventually(t, "no workload left", 2*time.Minute, func() error {
			out := kubectl(t, "get", "deployments,replicasets,pods,services,configmaps,secrets", "-A",
				"-l", "app.kubernetes.io/managed-by in (comet-operator,Helm)", "-o", "name")
			if out != "" {
				return fmt.Errorf("left: %s", out)
			}
			return nil
		})
		if out := kubectl(t, "get", "crd", "cometservers.comet.cometop.dev", "-o", "name"); out == "" {
			t.Fatal("the CRD was not kept")
		}
	})
}
