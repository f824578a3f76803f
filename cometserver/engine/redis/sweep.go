package redis

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/rueidis"
)

// sweep runs idle expiry every half expiry period, as the in-memory
// engine does, so that a channel lives at most 1.5 times the expiry after
// its last activity. A channel's activity is a write, or a listener on any
// server: each server marks the channels it watches active (touch) every
// round. Every server sweeps; the close script decides atomically, so two
// sweeps of one channel end it once.
func (e *Engine) sweep() {
	defer e.wg.Done()
	expiry := e.o.Limits.IdleExpiry
	t := time.NewTicker(expiry / 2)
	defer t.Stop()
	for {
		select {
		case <-e.stop:
			return
		case <-t.C:
		}
		if err := e.touchWatched(); err != nil {
			e.noteError(fmt.Errorf("marking watched channels active: %w", err))
		}
		if err := e.closeIdle(expiry); err != nil {
			e.noteError(fmt.Errorf("idle expiry: %w", err))
		}
	}
}

// touchWatched marks every channel this server watches active.
func (e *Engine) touchWatched() error {
	for _, p := range e.parts {
		p.mu.Lock()
		metas := make([]string, 0, len(p.subs))
		for id := range p.subs {
			meta, _, _ := e.keys(id)
			metas = append(metas, meta)
		}
		p.mu.Unlock()
		for len(metas) > 0 {
			n := min(len(metas), 500)
			err := e.do(context.Background(), "touch", func(ctx context.Context, c rueidis.Client) error {
				return touchScript.Exec(ctx, c, metas[:n], nil).Error()
			})
			if err != nil {
				return err
			}
			metas = metas[n:]
		}
	}
	return nil
}

// closeIdle ends the channels idle for expiry, and takes names whose
// channel is gone out of the registry.
func (e *Engine) closeIdle(expiry time.Duration) error {
	return e.do(context.Background(), "idle expiry", func(ctx context.Context, c rueidis.Client) error {
		now, err := c.Do(ctx, c.B().Time().Build()).AsStrSlice()
		if err != nil || len(now) != 2 {
			return fmt.Errorf("redis TIME: %v %w", now, err)
		}
		sec, _ := strconv.ParseInt(now[0], 10, 64)
		before := sec*1000 - expiry.Milliseconds()
		// The registry's score is when a channel was last seen active: only
		// those older than the expiry can be idle.
		ids, err := c.Do(ctx, c.B().Zrangebyscore().Key(e.registry()).Min("-inf").Max(strconv.FormatInt(before, 10)).
			Limit(0, 200).Build()).AsStrSlice()
		if err != nil {
			return err
		}
		for _, id := range ids {
			meta, stream, ch := e.keys(id)
			r, err := closeScript.Exec(ctx, c, []string{meta, stream}, []string{ch, strconv.FormatInt(expiry.Milliseconds(), 10)}).ToString()
			if err != nil {
				return err
			}
			switch r {
			case "ended", "gone":
				err = c.Do(ctx, c.B().Zrem().Key(e.registry()).Member(id).Build()).Error()
			default: // active since: look again one expiry after that
				at, _ := strconv.ParseFloat(r, 64)
				err = c.Do(ctx, c.B().Zadd().Key(e.registry()).Xx().ScoreMember().ScoreMember(at, id).Build()).Error()
			}
			if err != nil {
				return err
			}
		}
		return nil
	})
}
