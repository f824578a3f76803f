//go:build !linux

package longpoll

// Without epoll a poll waits on a goroutine of its own (wait): there is
// no loop, and park declines before it would use one.
type parkLoop struct{}

var theParkLoop = func() *parkLoop { return nil }

func (*parkLoop) watch(int, *parked) error     { panic("longpoll: no park loop on this platform") }
func (*parkLoop) forget(*parked, int)          {}
func (c *parked) takeByte() bool               { return true }
func (c *parked) readNow([]byte) (int, error)  { return 0, errWouldBlock }
func (c *parked) writeNow([]byte) (int, error) { return 0, errWouldBlock }
