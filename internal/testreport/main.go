// Command testreport reads `go test -json` on stdin and prints what a
// developer needs from it: each package's result as go test prints it, the
// output of failed tests and builds, and which tests were skipped and why
// (as non-root nearly every test skips, and a bare "ok" would hide it). It
// exits 1 when anything failed.
//
//	go test -json ./... | go run ./internal/testreport
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"
)

// event is one line of test2json's output.
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	Elapsed    float64
	ImportPath string
}

func main() {
	failed := false
	output := map[string][]string{}  // package/test -> its output lines
	skipped := map[string][]string{} // reason -> package.Test
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			fmt.Println(sc.Text()) // not JSON: go test's own message
			continue
		}
		id := e.Package + "/" + e.Test
		switch e.Action {
		case "output", "build-output":
			output[id+e.ImportPath] = append(output[id+e.ImportPath], e.Output)
		case "build-fail":
			failed = true
			fmt.Print(strings.Join(output["/"+e.ImportPath], ""))
		case "skip":
			if e.Test != "" {
				reason := skipReason(output[id])
				skipped[reason] = append(skipped[reason], shortPackage(e.Package)+"."+e.Test)
			}
		case "fail":
			failed = true
			if e.Test != "" {
				fmt.Print(strings.Join(output[id], ""))
			} else {
				fmt.Printf("FAIL\t%s\t%.3fs\n", e.Package, e.Elapsed)
			}
		case "pass":
			if e.Test == "" {
				fmt.Printf("ok  \t%s\t%.3fs\n", e.Package, e.Elapsed)
			}
		}
		if e.Action == "pass" || e.Action == "skip" {
			delete(output, id)
		}
	}
	printSkipped(skipped)
	if failed {
		os.Exit(1)
	}
}

// skipReason is the message t.Skip printed: the line after the test's
// "--- SKIP" header, without its file:line prefix.
func skipReason(lines []string) string {
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "=== ") || strings.HasPrefix(l, "--- SKIP") {
			continue
		}
		if _, msg, ok := strings.Cut(l, ": "); ok && strings.Contains(l, "_test.go:") {
			return msg
		}
	}
	return "(no reason given)"
}

func shortPackage(p string) string {
	return strings.TrimPrefix(p, "github.com/strata-snapshotter/strata/")
}

func printSkipped(skipped map[string][]string) {
	if len(skipped) == 0 {
		return
	}
	reasons := make([]string, 0, len(skipped))
	total := 0
	for r, tests := range skipped {
		reasons = append(reasons, r)
		total += len(tests)
	}
	sort.Slice(reasons, func(i, j int) bool { return len(skipped[reasons[i]]) > len(skipped[reasons[j]]) })
	noun := "tests"
	if total == 1 {
		noun = "test"
	}
	fmt.Printf("\nskipped %d %s:\n", total, noun)
	for _, r := range reasons {
		tests := skipped[r]
		sort.Strings(tests)
		shown := tests
		if len(shown) > 6 {
			shown = append(shown[:6:6], fmt.Sprintf("and %d more", len(tests)-6))
		}
		fmt.Printf("  %d: %s (%s)\n", len(tests), r, strings.Join(shown, ", "))
	}
}
