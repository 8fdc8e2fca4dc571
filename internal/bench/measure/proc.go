package measure

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat. It
// is 100 on every Linux architecture Go supports.
const clockTicks = 100

// ProcStat is a snapshot of one process's resource use.
type ProcStat struct {
	// RSSBytes is the resident set size (VmRSS).
	RSSBytes int64 `json:"rss_bytes"`
	// CPUSeconds is user plus system CPU time since the process started.
	CPUSeconds float64 `json:"cpu_seconds"`
	// Threads is the number of OS threads.
	Threads int `json:"threads"`
}

// ReadProc reads the statistics of process pid from /proc.
func ReadProc(pid int) (ProcStat, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ProcStat{}, fmt.Errorf("read process stats: %w", err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return ProcStat{}, fmt.Errorf("read process stats: %w", err)
	}
	return parseProc(stat, status)
}

// parseProc parses the contents of /proc/<pid>/stat and /proc/<pid>/status.
func parseProc(stat, status []byte) (ProcStat, error) {
	var ps ProcStat
	// The command name (field 2) is in parentheses and may hold spaces:
	// fields are counted from the last ')'.
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return ps, fmt.Errorf("parse /proc stat: no command name in %q", stat)
	}
	fields := strings.Fields(string(stat[end+1:]))
	// fields[0] is field 3 (state); utime and stime are fields 14 and 15.
	if len(fields) < 13 {
		return ps, fmt.Errorf("parse /proc stat: %d fields", len(fields))
	}
	utime, err1 := strconv.ParseUint(fields[11], 10, 64)
	stime, err2 := strconv.ParseUint(fields[12], 10, 64)
	if err1 != nil || err2 != nil {
		return ps, fmt.Errorf("parse /proc stat: utime %q stime %q", fields[11], fields[12])
	}
	ps.CPUSeconds = float64(utime+stime) / clockTicks
	for line := range strings.Lines(string(status)) {
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		val = strings.TrimSpace(val)
		switch key {
		case "VmRSS":
			kb, err := strconv.ParseInt(strings.TrimSuffix(val, " kB"), 10, 64)
			if err != nil {
				return ps, fmt.Errorf("parse VmRSS %q: %w", val, err)
			}
			ps.RSSBytes = kb * 1024
		case "Threads":
			ps.Threads, _ = strconv.Atoi(val)
		}
	}
	return ps, nil
}
