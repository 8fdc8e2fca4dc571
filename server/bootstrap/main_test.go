package bootstrap_test

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/edgesync/edgesync/internal/repo"
)

// TestMain fails the package when a test leaves goroutines behind.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, repo.ClientGoLeakOptions()...)
}
