package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/term"

	"github.com/edgesync/edgesync/internal/bench/edgesim"
)

// progress shows what the benchmark is doing on stderr: on a terminal one
// line rewritten every second (connected N/M, synced, events/s), elsewhere
// a line every ten seconds.
type progress struct {
	w    io.Writer
	tty  bool
	once sync.Once
	done chan struct{}

	mu      sync.Mutex // guards the fields below
	label   string
	fleet   *edgesim.Fleet
	counter *atomic.Int64
	line    func(every time.Duration) string
	target  int64
	last    int64
	dirty   bool
}

func newProgress(f *os.File) *progress {
	p := &progress{w: f, tty: term.IsTerminal(int(f.Fd())), done: make(chan struct{})}
	go p.loop()
	return p
}

func (p *progress) loop() {
	every := 10 * time.Second
	if p.tty {
		every = time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-p.done:
			return
		case <-t.C:
			p.show(every)
		}
	}
}

func (p *progress) show(every time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	var line string
	switch {
	case p.fleet != nil:
		c := &p.fleet.C
		objs := c.Objects.Load()
		line = fmt.Sprintf("%s: connected %d/%d synced %d events/s %.0f heartbeats %d stream errors %d",
			p.label, c.Connected.Load(), p.target, c.Synced.Load(), float64(objs-p.last)/every.Seconds(), c.Heartbeats.Load(), c.StreamsEnded.Load())
		p.last = objs
	case p.line != nil:
		line = p.label + ": " + p.line(every)
	case p.counter != nil:
		n := p.counter.Load()
		line = fmt.Sprintf("%s: %d/%d messages, %.0f/s", p.label, n, p.target, float64(n-p.last)/every.Seconds())
		p.last = n
	default:
		return
	}
	if p.tty {
		fmt.Fprintf(p.w, "\r\033[K%s", line)
		p.dirty = true
	} else {
		fmt.Fprintln(p.w, line)
	}
}

// watch shows fleet's counters under label.
func (p *progress) watch(label string, fleet *edgesim.Fleet, target int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.label, p.fleet, p.counter, p.line, p.target, p.last = label, fleet, nil, nil, int64(target), fleet.C.Objects.Load()
}

// watchCounter shows a message counter under label.
func (p *progress) watchCounter(label string, n *atomic.Int64, target int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.label, p.fleet, p.counter, p.line, p.target, p.last = label, nil, n, nil, target, n.Load()
}

// watchLine shows under label what line returns, every being the time
// since the previous line.
func (p *progress) watchLine(label string, line func(every time.Duration) string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.label, p.fleet, p.counter, p.line = label, nil, nil, line
}

// say prints one line of news.
func (p *progress) say(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.dirty {
		fmt.Fprint(p.w, "\r\033[K")
		p.dirty = false
	}
	fmt.Fprintf(p.w, time.Now().Format("15:04:05 ")+format+"\n", args...)
}

func (p *progress) stop() {
	p.once.Do(func() {
		close(p.done)
		p.mu.Lock()
		if p.dirty {
			fmt.Fprintln(p.w)
		}
		p.mu.Unlock()
	})
}
