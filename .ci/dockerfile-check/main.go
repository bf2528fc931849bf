// Command dockerfile-check validates Dockerfiles with BuildKit's own Go packages, without a
// Docker daemon: the project's machines and CI runners have no Docker engine, so the images are
// never built there, and regexes over the text miss what `docker build` would reject. For each
// Dockerfile it parses it, runs BuildKit's linter (what `docker build --check` runs: every rule
// that is not experimental, whatever the file's own "# check=" directive says; --experimental adds
// the rest; CopyIgnoredFile needs a build context and does not run) and converts it to LLB for each
// target platform (build platform linux/amd64), then prints one JSON document: lint warnings,
// errors, and per platform the final image config and each stage's base.
//
// Usage: dockerfile-check [--platform linux/amd64,linux/arm64] [--build-arg K=V ...]
// [--experimental] Dockerfile... Exit status: 0 when all is clean, 1 on lint warnings or
// parse/conversion errors (the JSON is printed all the same), 2 on usage errors.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"regexp"
	"slices"
	"strings"

	"github.com/containerd/platforms"
	"github.com/distribution/reference"
	"github.com/moby/buildkit/client/llb"
	"github.com/moby/buildkit/client/llb/sourceresolver"
	"github.com/moby/buildkit/frontend/dockerfile/dockerfile2llb"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerui"
	"github.com/moby/buildkit/frontend/subrequests/targets"
	"github.com/moby/buildkit/solver/pb"
	digest "github.com/opencontainers/go-digest"
	ocispecs "github.com/opencontainers/image-spec/specs-go/v1"
)

var buildPlatform = ocispecs.Platform{OS: "linux", Architecture: "amd64"}

// refLabel carries an image reference from stubRegistry to the report (and is removed there).
const refLabel = "dockerfile-check.ref"

// finding is a lint warning (with its rule) or an error (with the platform it happened on, if any).
type finding struct {
	Rule     string `json:"rule,omitempty"`
	Platform string `json:"platform,omitempty"`
	Line     int    `json:"line"`
	Message  string `json:"message"`
}

type stage struct {
	Name     string `json:"name"`
	From     string `json:"from"`               // as written
	Base     string `json:"base"`               // the image it resolves to (through other stages)
	Platform string `json:"platform,omitempty"` // of that image
}

type image struct {
	Base         string            `json:"base"`
	User         string            `json:"user"`
	Workdir      string            `json:"workdir"`
	Env          []string          `json:"env"`
	Entrypoint   []string          `json:"entrypoint"`
	Cmd          []string          `json:"cmd"`
	Labels       map[string]string `json:"labels"`
	ExposedPorts []string          `json:"exposed_ports"`
	Healthcheck  map[string]any    `json:"healthcheck,omitempty"`
	Stages       []stage           `json:"stages"`
}

type report struct {
	Lint      []finding         `json:"lint"`
	Errors    []finding         `json:"errors"`
	Platforms map[string]*image `json:"platforms"`
}

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("dockerfile-check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	platformList := fs.String("platform", "linux/amd64", "comma-separated target platforms")
	experimental := fs.Bool("experimental", false, "also run BuildKit's experimental lint rules")
	buildArgs := map[string]string{}
	fs.Func("build-arg", "`K=V` build argument (repeatable)", func(s string) error {
		k, v, ok := strings.Cut(s, "=")
		if !ok || k == "" {
			return fmt.Errorf("want K=V, got %q", s)
		}
		buildArgs[k] = v
		return nil
	})
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: dockerfile-check [--platform P1,P2] [--build-arg K=V ...] [--experimental] Dockerfile...")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	targetPlatforms, err := platforms.ParseAll(strings.Split(*platformList, ","))
	if err != nil {
		fmt.Fprintln(stderr, "dockerfile-check: --platform:", err)
		return 2
	} else if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	reports, status := map[string]*report{}, 0
	for _, path := range fs.Args() {
		dt, err := os.ReadFile(path)
		if err != nil {
			fmt.Fprintln(stderr, "dockerfile-check:", err)
			return 2
		}
		r := check(context.Background(), path, dt, targetPlatforms, buildArgs, *experimental)
		for _, w := range r.Lint {
			fmt.Fprintf(stderr, "%s:%d: %s: %s\n", path, w.Line, w.Rule, w.Message)
		}
		for _, e := range r.Errors {
			fmt.Fprintf(stderr, "%s:%d: error: %s\n", path, e.Line, strings.TrimSpace(e.Platform+" "+e.Message))
		}
		if len(r.Lint)+len(r.Errors) > 0 {
			status = 1
		}
		reports[path] = r
	}
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(reports); err != nil {
		fmt.Fprintln(stderr, "dockerfile-check:", err)
		return 1
	}
	return status
}

func check(ctx context.Context, path string, dt []byte, targetPlatforms []ocispecs.Platform, buildArgs map[string]string, experimental bool) *report {
	r := &report{Lint: []finding{}, Errors: []finding{}, Platforms: map[string]*image{}}
	if _, err := parser.Parse(bytes.NewReader(dt)); err != nil {
		r.Errors = append(r.Errors, finding{Line: errorLine(err), Message: err.Error()})
		return r
	}
	src, shift := lintSource(dt, experimental)
	lint, err := dockerfile2llb.DockerfileLint(ctx, src, convertOpt(path, src, targetPlatforms[0], targetPlatforms, buildArgs, ""))
	if err != nil {
		r.Errors = append(r.Errors, finding{Message: err.Error()})
		return r
	}
	for _, w := range lint.Warnings {
		r.Lint = append(r.Lint, finding{Rule: w.RuleName, Line: max(locationLine(w.Location)-shift, 0), Message: w.Detail})
	}
	list, err := dockerfile2llb.ListTargets(ctx, dt)
	if err == nil && len(list.Targets) == 0 {
		err = errors.New("the Dockerfile has no FROM")
	}
	if err != nil {
		r.Errors = append(r.Errors, finding{Line: errorLine(err), Message: err.Error()})
		return r
	}
	for _, p := range targetPlatforms {
		name := platforms.Format(p)
		img, err := convert(ctx, path, dt, p, targetPlatforms, buildArgs, list.Targets)
		if err != nil {
			r.Errors = append(r.Errors, finding{Platform: name, Line: errorLine(err), Message: err.Error()})
			continue
		}
		r.Platforms[name] = img
	}
	// Errors come from the conversions above, which read the file as it is; the lint run's own
	// error (it converts every stage, with the directive added) only counts when they find none.
	if e := lint.Error; e != nil && len(r.Errors) == 0 {
		r.Errors = append(r.Errors, finding{Line: max(locationLine(&e.Location)-shift, 0), Message: e.Message})
	}
	return r
}

// convert runs Dockerfile2LLB once per named stage (to learn each stage's resolved base) and
// reports the image config of the default (last) stage.
func convert(ctx context.Context, path string, dt []byte, p ocispecs.Platform, all []ocispecs.Platform, buildArgs map[string]string, stages []targets.Target) (*image, error) {
	img := &image{}
	var final *dockerfile2llb.Result
	for i, s := range stages {
		target, last := s.Name, i == len(stages)-1
		if last {
			target = ""
		} else if target == "" { // an unnamed stage cannot be a target: report it as written
			img.Stages = append(img.Stages, stage{Name: fmt.Sprintf("stage-%d", i), From: s.Base, Base: s.Base})
			continue
		}
		res, err := dockerfile2llb.Dockerfile2LLB(ctx, dt, convertOpt(path, dt, p, all, buildArgs, target))
		if err != nil {
			return nil, err
		}
		st := stage{Name: s.Name, From: s.Base, Base: s.Base} // scratch has no image
		if b := res.BaseImage; b != nil && b.Config.Labels[refLabel] != "" {
			st.Base, st.Platform = b.Config.Labels[refLabel], platforms.Format(b.Platform)
		}
		img.Stages = append(img.Stages, st)
		img.Base, final = st.Base, res
	}
	c := final.Image.Config
	img.User, img.Workdir, img.Env, img.Entrypoint, img.Cmd = c.User, c.WorkingDir, c.Env, c.Entrypoint, c.Cmd
	img.Labels = c.Labels
	delete(img.Labels, refLabel)
	img.ExposedPorts = []string{}
	for port := range c.ExposedPorts {
		img.ExposedPorts = append(img.ExposedPorts, port)
	}
	slices.Sort(img.ExposedPorts)
	if h := c.Healthcheck; h != nil {
		img.Healthcheck = map[string]any{"test": h.Test, "interval": h.Interval.String(), "timeout": h.Timeout.String(),
			"start_period": h.StartPeriod.String(), "start_interval": h.StartInterval.String(), "retries": h.Retries}
	}
	return img, nil
}

func convertOpt(path string, dt []byte, p ocispecs.Platform, all []ocispecs.Platform, buildArgs map[string]string, target string) dockerfile2llb.ConvertOpt {
	sourceMap := llb.NewSourceMap(nil, path, "Dockerfile", dt)
	sourceMap.Definition = &llb.Definition{} // the lint report copies it; there is no LLB for the file itself
	return dockerfile2llb.ConvertOpt{
		Config: dockerui.Config{BuildArgs: buildArgs, Target: target, TargetPlatforms: all,
			BuildPlatforms: []ocispecs.Platform{buildPlatform}, MultiPlatformRequested: len(all) > 1},
		SourceMap:      sourceMap,
		TargetPlatform: &p,
		MetaResolver:   stubRegistry{},
	}
}

// stubRegistry stands in for the registry, which cannot be reached where this runs: any image
// reference with an explicit tag or a digest "exists", with a minimal valid OCI image config for
// the requested platform (a default PATH, one layer, refLabel naming the reference). An untagged
// (:latest) reference is refused, so that a mistyped stage name in FROM or COPY --from fails as it
// would against a registry instead of passing as an image.
type stubRegistry struct{}

func (stubRegistry) ResolveImageConfig(_ context.Context, ref string, opt sourceresolver.Opt) (string, digest.Digest, []byte, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return "", "", nil, err
	}
	tagged, isTagged := named.(reference.Tagged)
	digested, isDigested := named.(reference.Digested)
	if !isDigested && (!isTagged || tagged.Tag() == "latest") {
		return "", "", nil, fmt.Errorf("%s: not found (neither a stage nor a pinned image: the stand-in registry knows only explicit tags and digests)", ref)
	}
	p := buildPlatform
	if opt.ImageOpt != nil && opt.ImageOpt.Platform != nil {
		p = *opt.ImageOpt.Platform
	}
	config, err := json.Marshal(ocispecs.Image{
		Platform: p,
		Config: ocispecs.ImageConfig{Env: []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
			Labels: map[string]string{refLabel: reference.FamiliarString(named)}},
		RootFS: ocispecs.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromString("")}},
	})
	if err != nil {
		return "", "", nil, err
	}
	if isDigested {
		return ref, digested.Digest(), config, nil
	}
	return ref, digest.FromBytes(config), config, nil
}

var directive = regexp.MustCompile(`^\s*#\s*([a-zA-Z][a-zA-Z0-9]*)\s*=`)

// lintSource returns the Dockerfile with a "# check=" parser directive that turns on every rule
// (experimental ones too when asked), in place of the file's own: without a frontend client, that
// directive is the only way to configure BuildKit's linter. It returns the number of lines it
// added in front (when the file had no check directive), to take off reported line numbers.
func lintSource(dt []byte, experimental bool) ([]byte, int) {
	check := "# check=error=false\n" // the default: every rule that is not experimental
	if experimental {
		check = "# check=experimental=all\n"
	}
	lines := strings.SplitAfter(string(dt), "\n")
	for i, line := range lines {
		if m := directive.FindStringSubmatch(line); m == nil {
			break
		} else if strings.EqualFold(m[1], "check") {
			lines[i] = check
			return []byte(strings.Join(lines, "")), 0
		}
	}
	if !experimental {
		return dt, 0
	}
	return append([]byte(check), dt...), 1
}

func locationLine(loc *pb.Location) int {
	if loc == nil || len(loc.Ranges) == 0 || loc.Ranges[0].Start == nil {
		return 0
	}
	return int(loc.Ranges[0].Start.Line)
}

func errorLine(err error) int {
	var le *parser.LocationError
	if errors.As(err, &le) && len(le.Locations) > 0 && len(le.Locations[0]) > 0 {
		return le.Locations[0][0].Start.Line
	}
	return 0
}
