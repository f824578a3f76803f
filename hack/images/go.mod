module github.com/cometop/comet-operator/hack/images

go 1.26.8

// The image builder: its own module, so that go-containerregistry stays
// out of the product's go.mod. It compiles this checkout's binaries.
require github.com/cometop/comet-operator v0.0.0

require github.com/google/go-containerregistry v0.22.1

require (
	github.com/klauspost/compress v1.20.1 // indirect
	github.com/opencontainers/go-digest v1.0.0 // indirect
	github.com/opencontainers/image-spec v1.1.1 // indirect
)

replace github.com/cometop/comet-operator => ../..
