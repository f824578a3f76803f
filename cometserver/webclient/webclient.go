// Package webclient serves comet.js, the browser client of the comet
// protocol, from the comet server itself at fixed paths: /comet.js (a
// classic script that sets window.Comet) and /comet.mjs (an ES module).
package webclient

import (
	"bytes"
	"embed"
	"net/http"
	"time"
)

//go:embed comet.js comet.mjs
var files embed.FS

// Paths where Register serves the client.
const (
	ScriptPath = "/comet.js"
	ModulePath = "/comet.mjs"
)

// Register serves the client files on mux.
func Register(mux *http.ServeMux) {
	for path, name := range map[string]string{ScriptPath: "comet.js", ModulePath: "comet.mjs"} {
		body, err := files.ReadFile(name)
		if err != nil {
			panic("webclient: " + err.Error()) // embedded at build time
		}
		mux.Handle("GET "+path, fileHandler(body))
	}
}

// Script returns comet.js, for pages that inline it.
func Script() []byte {
	b, _ := files.ReadFile("comet.js")
	return b
}

func fileHandler(body []byte) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache") // revalidate: the client follows the server's version
		w.Header().Set("X-Content-Type-Options", "nosniff")
		http.ServeContent(w, r, "", time.Time{}, bytes.NewReader(body))
	})
}
