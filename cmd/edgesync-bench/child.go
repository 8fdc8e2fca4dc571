package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"

	"github.com/edgesync/edgesync/internal/bench/measure"
	"github.com/edgesync/edgesync/internal/bench/simfeed"
)

// child is a server process under test.
type child struct {
	cmd   *exec.Cmd
	ready ready
	done  chan error // receives Wait's result once
	http  *http.Client
}

// startChild runs "edgesync-bench serve args..." and waits for its ready
// line. Its stderr goes to logPath.
func startChild(ctx context.Context, logPath string, args ...string) (*child, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(self, append([]string{"serve"}, args...)...)
	cmd.Stderr = logFile
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start server process: %w", err)
	}
	c := &child{cmd: cmd, done: make(chan error, 1), http: &http.Client{Timeout: 5 * time.Minute}}
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		io.Copy(io.Discard, stdout)
	}()
	go func() {
		c.done <- cmd.Wait()
		logFile.Close()
	}()
	timeout := time.NewTimer(time.Minute)
	defer timeout.Stop()
	select {
	case line, ok := <-lines:
		if !ok {
			c.kill()
			return nil, fmt.Errorf("server process exited before it was ready; see %s", logPath)
		}
		if err := json.Unmarshal([]byte(line), &c.ready); err != nil {
			c.kill()
			return nil, fmt.Errorf("server process ready line %q: %w", line, err)
		}
		return c, nil
	case <-timeout.C:
		c.kill()
		return nil, fmt.Errorf("server process not ready within a minute; see %s", logPath)
	case <-ctx.Done():
		c.kill()
		return nil, ctx.Err()
	}
}

// kill ends the process at once (SIGKILL) and waits for it.
func (c *child) kill() {
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
	c.wait()
}

// stop asks the process to shut down gracefully and waits up to 30 s.
func (c *child) stop() {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(30 * time.Second)
	defer t.Stop()
	select {
	case err := <-c.done:
		c.done <- err
	case <-t.C:
		c.kill()
	}
}

func (c *child) wait() {
	err := <-c.done
	c.done <- err
}

func (c *child) proc() (measure.ProcStat, error) {
	return measure.ReadProc(c.ready.PID)
}

func (c *child) metrics(ctx context.Context) (measure.Metrics, error) {
	return measure.Scrape(ctx, c.http, "http://"+c.ready.HTTP+"/metrics")
}

// put publishes count new ConfigMap versions (see control.handler) and
// returns the last resource version.
func (c *child) put(ctx context.Context, name string, from, to, count, size int) (string, error) {
	return c.putOrdered(ctx, name, from, to, count, size, "object")
}

// putOrdered is put with the publishing order: "object" (each object to
// every node) or "node" (every object to one node, then the next node).
func (c *child) putOrdered(ctx context.Context, name string, from, to, count, size int, order string) (string, error) {
	q := url.Values{}
	q.Set("order", order)
	q.Set("name", name)
	q.Set("from", strconv.Itoa(from))
	q.Set("to", strconv.Itoa(to))
	q.Set("count", strconv.Itoa(count))
	q.Set("size", strconv.Itoa(size))
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+c.ready.Control+"/put?"+q.Encode(), nil)
	if err != nil {
		return "", err
	}
	var out struct {
		ResourceVersion string `json:"resource_version"`
	}
	if err := c.do(req, &out); err != nil {
		return "", fmt.Errorf("publish %s: %w", name, err)
	}
	return out.ResourceVersion, nil
}

func (c *child) counts(ctx context.Context) (simfeed.Counts, error) {
	var out simfeed.Counts
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.ready.Control+"/counts", nil)
	if err != nil {
		return out, err
	}
	return out, c.do(req, &out)
}

func (c *child) do(req *http.Request, out any) error {
	resp, err := c.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(resp.Body)
		return fmt.Errorf("%s: %s", resp.Status, b)
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// profile saves a pprof profile of the process: "heap", or "profile" (CPU)
// over seconds.
func (c *child) profile(ctx context.Context, kind string, seconds int, path string) error {
	u := "http://" + c.ready.HTTP + "/debug/pprof/" + kind
	if kind == "profile" {
		u += "?seconds=" + strconv.Itoa(seconds)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("pprof %s: %w", kind, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("pprof %s: %s", kind, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	_, err = io.Copy(f, resp.Body)
	return errors.Join(err, f.Close())
}
