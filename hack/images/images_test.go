package main

import (
	"archive/tar"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// Each image tarball loads back, runs its binary as the unprivileged user,
// and is the same, digest for digest, when built again from the same source.
func TestImages(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two static binaries")
	}
	const version, repo = "1.2.3-test", "registry.test/cometop"
	out := t.TempDir()
	for _, im := range Images {
		t.Run(im.Name, func(t *testing.T) {
			path, digest, err := Build(im, "../..", repo, version, out)
			if err != nil {
				t.Fatal(err)
			}
			tag, _ := name.NewTag(RepoName(repo, im.Name) + ":" + version)
			img, err := tarball.ImageFromPath(path, &tag)
			if err != nil {
				t.Fatalf("the tarball does not load: %v", err)
			}
			if d, _ := img.Digest(); d != digest {
				t.Fatalf("loaded digest %s, built %s", d, digest)
			}
			cfg, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			c := cfg.Config
			if strings.Join(c.Entrypoint, " ") != im.Binary || c.User != "65532:65532" ||
				c.Labels["org.opencontainers.image.version"] != version || c.Labels["org.opencontainers.image.title"] != im.Name ||
				cfg.OS != "linux" || cfg.Architecture != "amd64" {
				t.Fatalf("config %+v", cfg)
			}

			// Only the binary is in the image: no shell, nothing else.
			var files []string
			bin := filepath.Join(t.TempDir(), "bin")
			tr := tar.NewReader(mutate.Extract(img))
			for {
				hdr, err := tr.Next()
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				files = append(files, hdr.Name)
				if "/"+hdr.Name == im.Binary {
					f, _ := os.OpenFile(bin, os.O_CREATE|os.O_WRONLY, 0o755)
					io.Copy(f, tr)
					f.Close()
				}
			}
			if strings.Join(files, ",") != strings.TrimPrefix(im.Binary, "/") {
				t.Fatalf("image files %q, want only %s", files, im.Binary)
			}
			got, err := exec.Command(bin, "--version").Output()
			if err != nil || strings.TrimSpace(string(got)) != version {
				t.Fatalf("%s --version: %q, %v", im.Binary, got, err)
			}

			_, again, err := Build(im, "../..", repo, version, t.TempDir())
			if err != nil || again != digest {
				t.Fatalf("rebuild gave %s, first build %s: not reproducible (%v)", again, digest, err)
			}
		})
	}
}
