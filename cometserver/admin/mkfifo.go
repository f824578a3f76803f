package admin

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// mkfifo creates a FIFO at path unless one is there already.
func mkfifo(path string) error {
	fi, err := os.Stat(path)
	switch {
	case err == nil && fi.Mode().Type() == fs.ModeNamedPipe:
		return nil
	case err == nil:
		return errors.New("a file that is not a FIFO is in the way")
	case !errors.Is(err, fs.ErrNotExist):
		return err
	}
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		return fmt.Errorf("mkfifo: %w", err)
	}
	return nil
}
