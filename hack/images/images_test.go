package main

import (
	"archive/tar"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/cometop/comet-operator/test/bounded"
)

// Each image tarball loads back, runs its binary as the unprivileged user,
// and is the same, digest for digest, when built again from the same source.
func TestImages(t *testing.T) {
	if testing.Short() {
		t.Skip("builds two static binaries")
	}
	// Four static builds on a shared machine: generous, but below go
	// test's own 10-minute timeout, so that a hang names this test.
	bounded.Test(t, 9*time.Minute)
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

			uid, gid, err := parseUser(c.User)
			if err != nil {
				t.Fatal(err)
			}

			// Only the binary is in the image: no shell, nothing else.
			var files []string
			var binHdr *tar.Header
			dir := runnableDir(t)
			bin := filepath.Join(dir, filepath.Base(im.Binary))
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
					binHdr = hdr
					extract(t, tr, hdr, bin)
				}
			}
			if strings.Join(files, ",") != strings.TrimPrefix(im.Binary, "/") {
				t.Fatalf("image files %q, want only %s", files, im.Binary)
			}
			// The binary as the image holds it: a plain file, not setuid
			// or setgid, that the image's user may execute.
			if binHdr.Typeflag != tar.TypeReg || binHdr.Mode&(syscall.S_ISUID|syscall.S_ISGID) != 0 ||
				!executableBy(binHdr, uid, gid) {
				t.Fatalf("%s in the image: type %q, mode %o, owner %d:%d; want a plain file that %d:%d may execute",
					im.Binary, binHdr.Typeflag, binHdr.Mode, binHdr.Uid, binHdr.Gid, uid, gid)
			}

			_, again, err := Build(im, "../..", repo, version, t.TempDir())
			if err != nil || again != digest {
				t.Fatalf("rebuild gave %s, first build %s: not reproducible (%v)", again, digest, err)
			}

			// And it runs as that user, with the mode and owner the image
			// gives it: the kernel checks the permission, not this test.
			cmd := exec.Command(bin, "--version")
			cmd.Dir = "/"
			asUser := os.Geteuid() == 0
			if asUser {
				cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid, Groups: []uint32{}}}
			}
			got, err := cmd.Output()
			if err != nil || strings.TrimSpace(string(got)) != version {
				t.Fatalf("%s --version as %d:%d: %q, %v", im.Binary, uid, gid, got, err)
			}
			if !asUser {
				t.Skipf("ran %s as uid %d: only root can run it as the image's user %d:%d", im.Binary, os.Geteuid(), uid, gid)
			}
		})
	}
}

// parseUser reads an image config's User as numeric uid:gid: the images
// have no /etc/passwd to resolve names with.
func parseUser(user string) (uid, gid uint32, err error) {
	u, g, ok := strings.Cut(user, ":")
	uid64, err1 := strconv.ParseUint(u, 10, 32)
	gid64, err2 := strconv.ParseUint(g, 10, 32)
	if !ok || err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("image user %q: want numeric uid:gid", user)
	}
	return uint32(uid64), uint32(gid64), nil
}

// executableBy applies the permission bits of a file in the image as the
// kernel would for a process of uid and gid (without supplementary groups).
func executableBy(hdr *tar.Header, uid, gid uint32) bool {
	switch {
	case uid == 0:
		return hdr.Mode&0o111 != 0
	case hdr.Uid == int(uid):
		return hdr.Mode&0o100 != 0
	case hdr.Gid == int(gid):
		return hdr.Mode&0o010 != 0
	}
	return hdr.Mode&0o001 != 0
}

// runnableDir is a fresh directory that any user may enter, for a binary
// to be run as the image's user (t.TempDir is private to its creator).
func runnableDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "images-run-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// extract writes the file of hdr to path with the image's mode and, as
// root, its owner.
func extract(t *testing.T, r io.Reader, hdr *tar.Header, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	_, err = io.Copy(f, r)
	if err2 := f.Close(); err == nil {
		err = err2
	}
	if err == nil && os.Geteuid() == 0 {
		err = os.Chown(path, hdr.Uid, hdr.Gid)
	}
	if err == nil { // after chown, which clears setuid bits
		err = os.Chmod(path, hdr.FileInfo().Mode())
	}
	if err != nil {
		t.Fatal(err)
	}
}
