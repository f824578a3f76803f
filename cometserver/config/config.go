// Package config loads the comet server's settings from its embedded
// defaults, a YAML file, the environment and flags, in rising precedence
// (PROTOCOL.md section 6). Each setting has one name: the file key
// max_body_bytes is the flag --max-body-bytes and the variable
// COMET_MAX_BODY_BYTES.
package config

import (
	_ "embed"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"net"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

//go:embed default.yaml
var defaultYAML []byte

// Config is every setting of the server.
type Config struct {
	MaxVirtualChannels OptionalInt `json:"max_virtual_channels"`
	Timeout            Duration    `json:"timeout"`
	Activated          bool        `json:"activated"`

	Listen      string   `json:"listen"`
	Path        string   `json:"path"`
	CORSOrigins []string `json:"cors_origins"`

	PublisherListen    string `json:"publisher_listen"`
	PublisherTokenFile string `json:"publisher_token_file"`

	AdminSocket string `json:"admin_socket"`
	CommandPipe string `json:"command_pipe"`

	MaxBodyBytes      int64    `json:"max_body_bytes"`
	MaxIDs            int      `json:"max_ids"`
	MaxWaiting        int      `json:"max_waiting"`
	MaxMessageBytes   int64    `json:"max_message_bytes"`
	MaxHeaderBytes    int      `json:"max_header_bytes"`
	ReadHeaderTimeout Duration `json:"read_header_timeout"`
	ReadTimeout       Duration `json:"read_timeout"`
	ChannelIdleExpiry Duration `json:"channel_idle_expiry"`
	HistorySize       int      `json:"history_size"`
	HistoryTTL        Duration `json:"history_ttl"`
	ShutdownGrace     Duration `json:"shutdown_grace"`

	Broker            string `json:"broker"`
	RedisURL          string `json:"redis_url"`
	RedisPasswordFile string `json:"redis_password_file"`
	RedisPrefix       string `json:"redis_prefix"`
	RedisTLSCAFile    string `json:"redis_tls_ca_file"`

	Demo  bool `json:"demo"`
	Pprof bool `json:"pprof"`

	LogLevel  string `json:"log_level"`
	LogFormat string `json:"log_format"`
}

// Default returns the embedded defaults.
func Default() Config {
	var c Config
	if err := yaml.UnmarshalStrict(defaultYAML, &c); err != nil {
		panic("embedded default.yaml: " + err.Error()) // a build defect, caught by the tests
	}
	return c
}

// Marshal renders c as a config file that Load reads back.
func (c Config) Marshal() ([]byte, error) { return yaml.Marshal(c) }

// overlayFile reads a YAML file over c, key by key, so that every error
// names its key. Unknown and duplicate keys are errors: a typo never goes
// unnoticed.
func (c *Config) overlayFile(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(js, &raw); err != nil {
		return fmt.Errorf("config file %s: want a mapping of keys to values", path)
	}
	fields := c.fieldsByKey()
	for _, key := range slices.Sorted(maps.Keys(raw)) {
		field, ok := fields[key]
		if !ok {
			return fmt.Errorf("config file %s: unknown key %q", path, key)
		}
		if err := json.Unmarshal(raw[key], field); err != nil {
			return fmt.Errorf("config file %s: %s: %w", path, key, err)
		}
	}
	return nil
}

// fieldsByKey maps each file key to a pointer to its field.
func (c *Config) fieldsByKey() map[string]any {
	v := reflect.ValueOf(c).Elem()
	fields := make(map[string]any, v.NumField())
	for i := range v.NumField() {
		key, _, _ := strings.Cut(v.Type().Field(i).Tag.Get("json"), ",")
		fields[key] = v.Field(i).Addr().Interface()
	}
	return fields
}

// EnvName is the environment variable for a flag name.
func EnvName(flagName string) string {
	return "COMET_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// flags binds a flag for every setting to the fields of c.
func (c *Config) flags(configPath *string) *flag.FlagSet {
	fs := flag.NewFlagSet("cometserver serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(configPath, "config", "", "YAML config file")
	fs.Var(&c.MaxVirtualChannels, "max-virtual-channels", `live channels allowed ("" for no limit)`)
	fs.Var(&c.Timeout, "timeout", "long-poll timeout, such as 20s")
	fs.BoolVar(&c.Activated, "activated", c.Activated, "serve comet requests at start")
	fs.StringVar(&c.Listen, "listen", c.Listen, "client endpoint address")
	fs.StringVar(&c.Path, "path", c.Path, "client endpoint path")
	fs.Var((*stringList)(&c.CORSOrigins), "cors-origins", "comma-separated allowed origins")
	fs.StringVar(&c.PublisherListen, "publisher-listen", c.PublisherListen, "publisher API address")
	fs.StringVar(&c.PublisherTokenFile, "publisher-token-file", c.PublisherTokenFile, "file holding the publisher bearer token")
	fs.StringVar(&c.AdminSocket, "admin-socket", c.AdminSocket, "admin Unix socket path")
	fs.StringVar(&c.CommandPipe, "command-pipe", c.CommandPipe, "admin FIFO path (empty: none)")
	fs.Int64Var(&c.MaxBodyBytes, "max-body-bytes", c.MaxBodyBytes, "request body limit")
	fs.IntVar(&c.MaxIDs, "max-ids", c.MaxIDs, "channel identifiers per request")
	fs.IntVar(&c.MaxWaiting, "max-waiting", c.MaxWaiting, "requests waiting at once (0: no cap)")
	fs.Int64Var(&c.MaxMessageBytes, "max-message-bytes", c.MaxMessageBytes, "publisher message limit")
	fs.IntVar(&c.MaxHeaderBytes, "max-header-bytes", c.MaxHeaderBytes, "request header limit")
	fs.Var(&c.ReadHeaderTimeout, "read-header-timeout", "time to read request headers")
	fs.Var(&c.ReadTimeout, "read-timeout", "time to read a request body")
	fs.Var(&c.ChannelIdleExpiry, "channel-idle-expiry", "close channels idle this long (0s: never)")
	fs.IntVar(&c.HistorySize, "history-size", c.HistorySize, "messages each channel keeps for resuming clients (0: none)")
	fs.Var(&c.HistoryTTL, "history-ttl", "how long a kept message stays (0s: none kept)")
	fs.Var(&c.ShutdownGrace, "shutdown-grace", "time to drain on SIGTERM")
	fs.StringVar(&c.Broker, "broker", c.Broker, "where channels live: memory (this process) or redis (shared by a fleet)")
	fs.StringVar(&c.RedisURL, "redis-url", c.RedisURL, "redis://[user@]host:port or rediss:// (TLS); more Cluster seeds as ?addr=host:port; no password")
	fs.StringVar(&c.RedisPasswordFile, "redis-password-file", c.RedisPasswordFile, "file holding the Redis password")
	fs.StringVar(&c.RedisPrefix, "redis-prefix", c.RedisPrefix, "start of every Redis key of this fleet")
	fs.StringVar(&c.RedisTLSCAFile, "redis-tls-ca-file", c.RedisTLSCAFile, "PEM file of the CAs that sign Redis's certificate (rediss://; default: the system's)")
	fs.BoolVar(&c.Pprof, "pprof", c.Pprof, "serve /debug/pprof/ on the publisher listener, behind its token")
	fs.BoolVar(&c.Demo, "demo", c.Demo, "serve the demo page at / (binds to loopback unless --listen is set)")
	fs.StringVar(&c.LogLevel, "log-level", c.LogLevel, "debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", c.LogFormat, "json or text")
	return fs
}

// PrintFlags writes every flag of "cometserver serve", with its default
// and meaning, to w.
func PrintFlags(w io.Writer) {
	c := Default()
	fs := c.flags(new(string))
	fs.SetOutput(w)
	fs.PrintDefaults()
}

// Load builds the configuration from the defaults, the file named by
// --config or COMET_CONFIG, the environment and args, and validates it.
func Load(args []string, getenv func(string) string) (Config, error) {
	// First pass: learn the file and which flags the command line sets.
	var scratch Config
	var path string
	first := scratch.flags(&path)
	if err := first.Parse(args); err != nil {
		return Config{}, fmt.Errorf("flags: %w", err)
	}
	if first.NArg() > 0 {
		return Config{}, fmt.Errorf("flags: unexpected argument %q", first.Arg(0))
	}
	onCommandLine := map[string]bool{}
	first.Visit(func(f *flag.Flag) { onCommandLine[f.Name] = true })
	if path == "" {
		path = getenv(EnvName("config"))
	}

	c := Default()
	if path != "" {
		if err := c.overlayFile(path); err != nil {
			return Config{}, err
		}
	}
	fs := c.flags(new(string))
	var envErr error
	fs.VisitAll(func(f *flag.Flag) {
		v := getenv(EnvName(f.Name))
		if v == "" || onCommandLine[f.Name] || f.Name == "config" || envErr != nil {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			envErr = fmt.Errorf("environment %s: %w", EnvName(f.Name), err)
		}
	})
	if envErr != nil {
		return Config{}, envErr
	}
	if err := fs.Parse(args); err != nil {
		return Config{}, fmt.Errorf("flags: %w", err)
	}
	// The demo lets anyone who reaches it post: unless told where to listen,
	// it listens on loopback only.
	if c.Demo && c.Listen == Default().Listen {
		c.Listen = "127.0.0.1" + c.Listen
	}
	return c, c.Validate()
}

// Validate checks every setting and names the first bad one.
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, a ...any) {
		errs = append(errs, fmt.Errorf("%s: "+format, append([]any{key}, a...)...))
	}
	if c.Timeout.Duration <= 0 {
		bad("timeout", "must be greater than 0, got %s", c.Timeout)
	}
	if err := checkAddr(c.Listen); err != nil {
		bad("listen", "%v", err)
	}
	switch {
	case !validPath(c.Path):
		bad("path", "must start with '/' and be segments of letters, digits and -._~!$&'()*+,;=:@ or %%XX, with no empty, '.' or '..' segment, got %q", c.Path)
	case slices.Contains(reservedPaths, c.Path) || strings.HasPrefix(c.Path, "/demo/"):
		bad("path", "%q is where the server serves its browser client or demo", c.Path)
	}
	for _, o := range c.CORSOrigins {
		if err := checkOrigin(o); err != nil {
			bad("cors_origins", "%v", err)
		}
	}
	if err := checkAddr(c.PublisherListen); err != nil {
		bad("publisher_listen", "%v", err)
	} else if c.PublisherTokenFile == "" && !IsLoopback(c.PublisherListen) {
		bad("publisher_listen", "without publisher_token_file it must be a loopback address, got %q", c.PublisherListen)
	}
	if c.AdminSocket == "" {
		bad("admin_socket", "must not be empty")
	}
	for _, l := range []struct {
		key           string
		value, lo, hi int64
	}{
		{"max_body_bytes", c.MaxBodyBytes, 1, 1 << 20},
		{"max_ids", int64(c.MaxIDs), 1, 10000},
		{"max_waiting", int64(c.MaxWaiting), 0, 100_000_000},
		{"max_message_bytes", c.MaxMessageBytes, 1, 64 << 20},
		{"max_header_bytes", int64(c.MaxHeaderBytes), 1, 1 << 20},
		{"history_size", int64(c.HistorySize), 0, 100_000},
	} {
		if l.value < l.lo || l.value > l.hi {
			bad(l.key, "must be from %d to %d, got %d", l.lo, l.hi, l.value)
		}
	}
	for _, l := range []struct {
		key           string
		value, lo, hi time.Duration
	}{
		{"read_header_timeout", c.ReadHeaderTimeout.Duration, time.Millisecond, time.Hour},
		{"read_timeout", c.ReadTimeout.Duration, time.Millisecond, time.Hour},
		{"shutdown_grace", c.ShutdownGrace.Duration, time.Millisecond, time.Hour},
		{"channel_idle_expiry", c.ChannelIdleExpiry.Duration, 0, 365 * 24 * time.Hour},
		{"history_ttl", c.HistoryTTL.Duration, 0, 24 * time.Hour},
	} {
		if l.value < l.lo || l.value > l.hi {
			bad(l.key, "must be from %s to %s, got %s", l.lo, l.hi, l.value)
		}
	}
	switch c.Broker {
	case "memory":
	case "redis":
		if err := CheckRedisURL(c.RedisURL); err != nil {
			bad("redis_url", "%v", err)
		}
		if c.RedisTLSCAFile != "" && !strings.HasPrefix(c.RedisURL, "rediss://") {
			bad("redis_tls_ca_file", "is for rediss:// only, and redis_url is %q", c.RedisURL)
		}
		if !validPrefix(c.RedisPrefix) {
			bad("redis_prefix", "must be 1 to 64 of A-Z a-z 0-9 - _ ., got %q", c.RedisPrefix)
		}
	default:
		bad("broker", "must be memory or redis, got %q", c.Broker)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		bad("log_level", "must be debug, info, warn or error, got %q", c.LogLevel)
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		bad("log_format", "must be json or text, got %q", c.LogFormat)
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid configuration: %w", errors.Join(errs...))
	}
	return nil
}

// CheckRedisURL checks a Redis address: redis:// or rediss://, a host,
// and no password (a URL shows in argv, environment dumps and logs; the
// password goes in redis_password_file).
func CheckRedisURL(s string) error {
	if s == "" {
		return errors.New("must be set when broker is redis")
	}
	u, err := url.Parse(s)
	if err != nil {
		return fmt.Errorf("not a URL: %w", err)
	}
	if u.Scheme != "redis" && u.Scheme != "rediss" {
		return fmt.Errorf("scheme must be redis or rediss (TLS), got %q", u.Scheme)
	}
	if u.Host == "" || u.Hostname() == "" {
		return fmt.Errorf("no host in %q", s)
	}
	if _, ok := u.User.Password(); ok {
		return errors.New("holds a password: put it in redis_password_file instead")
	}
	return nil
}

// validPrefix reports whether p may start Redis keys: no hash tag braces,
// no separators of ours.
func validPrefix(p string) bool {
	if len(p) == 0 || len(p) > 64 {
		return false
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// validPath reports whether p is an absolute path of RFC 3986 segments
// (pchar) that a net/http ServeMux pattern matches as it is: no '{', '}'
// or space, no empty, '.' or '..' segment (which the mux would redirect),
// so no trailing '/'.
func validPath(p string) bool {
	rest, ok := strings.CutPrefix(p, "/")
	if !ok {
		return false
	}
	for seg := range strings.SplitSeq(rest, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return false
		}
		for i := 0; i < len(seg); i++ {
			switch c := seg[i]; {
			case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', strings.IndexByte("-._~!$&'()*+,;=:@", c) >= 0:
			case c == '%' && i+2 < len(seg) && isHexByte(seg[i+1:i+3]):
				i += 2
			default:
				return false
			}
		}
	}
	return true
}

// isHexByte reports whether s is two hex digits (no sign, no prefix: base
// 16 takes neither).
func isHexByte(s string) bool {
	_, err := strconv.ParseUint(s, 16, 8)
	return err == nil
}

// reservedPaths are served next to the client endpoint.
var reservedPaths = []string{"/comet.js", "/comet.mjs"}

func checkAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("want host:port, got %q", addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("bad port in %q", addr)
	}
	return nil
}

// IsLoopback reports whether a host:port names only loopback: "localhost"
// or a loopback IP. An empty host (all interfaces) is not loopback.
func IsLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func checkOrigin(o string) error {
	if o == "*" {
		return nil
	}
	u, err := url.Parse(o)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return fmt.Errorf("want \"*\" or an origin such as https://example.com, got %q", o)
	}
	if u.Path == "/" {
		return fmt.Errorf("origin %q must not end with '/' (browsers send none)", o)
	}
	return nil
}

// OptionalInt is max_virtual_channels: an integer of at least 0, or unset
// (written "" as in the seed, or null, or absent). A string of digits is
// read as the integer, as Ocsigen's config file did.
type OptionalInt struct {
	Value   int
	Present bool
}

// Ptr returns the value, or nil if unset.
func (o OptionalInt) Ptr() *int {
	if !o.Present {
		return nil
	}
	v := o.Value
	return &v
}

func (o OptionalInt) String() string {
	if !o.Present {
		return ""
	}
	return strconv.Itoa(o.Value)
}

// Set reads "" (unset) or a non-negative integer; it is the flag.Value side.
func (o *OptionalInt) Set(s string) error {
	s = strings.TrimSpace(s)
	if s == "" {
		*o = OptionalInt{}
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return fmt.Errorf(`want "" for no limit or an integer of at least 0, got %q`, s)
	}
	*o = OptionalInt{Value: n, Present: true}
	return nil
}

func (o *OptionalInt) UnmarshalJSON(b []byte) error {
	var v any
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	switch v := v.(type) {
	case nil:
		*o = OptionalInt{}
		return nil
	case string:
		return o.Set(v)
	case float64:
		if v != float64(int(v)) || v < 0 {
			return fmt.Errorf(`want "" for no limit or an integer of at least 0, got %v`, v)
		}
		*o = OptionalInt{Value: int(v), Present: true}
		return nil
	}
	return fmt.Errorf(`want "" for no limit or an integer of at least 0, got %s`, b)
}

func (o OptionalInt) MarshalJSON() ([]byte, error) {
	if !o.Present {
		return []byte(`""`), nil
	}
	return []byte(strconv.Itoa(o.Value)), nil
}

// Duration is a time.Duration written as a string such as "20s".
type Duration struct{ time.Duration }

func (d *Duration) Set(s string) error {
	v, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		return fmt.Errorf("want a duration such as 20s, got %q", s)
	}
	d.Duration = v
	return nil
}

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("want a duration such as 20s, got %s", b)
	}
	return d.Set(s)
}

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(s string) error {
	*l = nil
	for part := range strings.SplitSeq(s, ",") {
		if part = strings.TrimSpace(part); part != "" {
			*l = append(*l, part)
		}
	}
	return nil
}
