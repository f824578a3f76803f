// Command images builds the operator's and the comet server's container
// images without a Docker engine: static Go binaries in one layer on an
// empty base, run as user 65532, written as tarballs that `docker load` and
// `ctr images import` accept. The same source gives the same image digests.
//
//	go run ./hack/images --version 0.1.0 --repo ghcr.io/cometop --out bin/images
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/cometop/comet-operator/cometserver/contract"
)

// Image is one image this program builds.
type Image struct {
	Name        string // repository name under --repo
	Package     string // Go main package, relative to the module root
	Binary      string // absolute path of the binary in the image
	VersionVar  string // -X target that receives the version
	Cmd         []string
	Description string
}

// Images are the project's images.
var Images = []Image{
	{
		Name: "comet-operator", Package: ".", Binary: "/manager", VersionVar: "main.version",
		Description: "Kubernetes operator for comet push servers",
	},
	{
		Name: "cometserver", Package: "./cometserver/cmd/cometserver", Binary: contract.ServerBinary, // where the operator execs ctl
		VersionVar: "github.com/cometop/comet-operator/cometserver/server.Version",
		Cmd:        []string{"serve"}, Description: "Comet push server (HTTP long polling)",
	},
}

// Pause is the local cluster's sandbox image (hack/local-cluster), built
// with --pause; it is no release image.
var Pause = Image{
	Name: "pause", Package: "./hack/pause", Binary: "/pause", VersionVar: "main.unused",
	Description: "Sandbox container of the comet-operator local cluster",
}

// User is the unprivileged user every image runs as, the one the
// operator's pods run as.
var User = strconv.Itoa(contract.UID) + ":" + strconv.Itoa(contract.UID)

func main() {
	version := flag.String("version", "", "image tag and the version the binaries report (required)")
	repo := flag.String("repo", "", "registry and namespace of the image names, such as ghcr.io/cometop (required)")
	out := flag.String("out", "bin/images", "folder for the image tarballs")
	root := flag.String("root", ".", "module root")
	pause := flag.Bool("pause", false, "build only the local cluster's pause image")
	flag.Parse()
	if *version == "" || *repo == "" {
		fmt.Fprintln(os.Stderr, "images: --version and --repo are required")
		os.Exit(2)
	}
	images := Images
	if *pause {
		images = []Image{Pause}
	}
	for _, im := range images {
		path, digest, err := Build(im, *root, *repo, *version, *out)
		if err != nil {
			fmt.Fprintf(os.Stderr, "images: %s: %v\n", im.Name, err)
			os.Exit(1)
		}
		fmt.Printf("%s %s:%s %s\n", path, RepoName(*repo, im.Name), *version, digest)
	}
}

// RepoName is the full repository of an image.
func RepoName(repo, image string) string { return strings.TrimSuffix(repo, "/") + "/" + image }

// Build compiles im's binary and writes its image tarball into out,
// returning the tarball's path and the image digest.
func Build(im Image, root, repo, version, out string) (string, v1.Hash, error) {
	tag, err := name.NewTag(RepoName(repo, im.Name) + ":" + version)
	if err != nil {
		return "", v1.Hash{}, fmt.Errorf("image name: %w", err)
	}
	work, err := os.MkdirTemp("", "images-")
	if err != nil {
		return "", v1.Hash{}, err
	}
	defer os.RemoveAll(work)
	bin := filepath.Join(work, filepath.Base(im.Binary))
	build := exec.Command("go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w -X "+im.VersionVar+"="+version, "-o", bin, im.Package)
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if b, err := build.CombinedOutput(); err != nil {
		return "", v1.Hash{}, fmt.Errorf("go build %s: %w\n%s", im.Package, err, b)
	}
	img, err := assemble(im, bin, version)
	if err != nil {
		return "", v1.Hash{}, err
	}
	digest, err := img.Digest()
	if err != nil {
		return "", v1.Hash{}, err
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return "", v1.Hash{}, err
	}
	path := filepath.Join(out, im.Name+"-"+version+".tar")
	if err := tarball.WriteToFile(path, tag, img); err != nil {
		return "", v1.Hash{}, fmt.Errorf("writing %s: %w", path, err)
	}
	return path, digest, nil
}

// epoch dates every file and the image itself, for reproducible digests.
var epoch = time.Unix(0, 0).UTC()

func assemble(im Image, bin, version string) (v1.Image, error) {
	layer, err := binaryLayer(bin, im.Binary)
	if err != nil {
		return nil, err
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture, cfg.OS = "amd64", "linux"
	cfg.Created = v1.Time{Time: epoch}
	cfg.Config.Entrypoint = []string{im.Binary}
	cfg.Config.Cmd = im.Cmd
	cfg.Config.User = User
	cfg.Config.WorkingDir = "/"
	cfg.Config.Labels = map[string]string{
		"org.opencontainers.image.title":       im.Name,
		"org.opencontainers.image.description": im.Description,
		"org.opencontainers.image.version":     version,
		"org.opencontainers.image.source":      "https://github.com/cometop/comet-operator",
		"org.opencontainers.image.licenses":    "Apache-2.0",
	}
	return mutate.ConfigFile(img, cfg)
}

// binaryLayer is a layer holding one executable at path, owned by root,
// with fixed times so that the same binary gives the same layer.
func binaryLayer(bin, path string) (v1.Layer, error) {
	data, err := os.ReadFile(bin)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	hdr := &tar.Header{
		Name: strings.TrimPrefix(path, "/"), Mode: 0o755, Size: int64(len(data)),
		ModTime: epoch, Typeflag: tar.TypeReg, Format: tar.FormatPAX,
	}
	if err := tw.WriteHeader(hdr); err != nil {
		return nil, err
	}
	if _, err := tw.Write(data); err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	})
}
