// helm-render renders a Helm chart the way `helm template` does, for machines without a Helm binary.
//
//	helm-render [NAME] CHART_DIR [-n NAMESPACE] [-f VALUES.yaml]... [--include-crds] [--kube-version v1.20.0]
//	            [-a API_VERSION]...
//
// It follows Helm 3's engine (pkg/engine, pkg/chartutil, pkg/releaseutil) for what Tollgate's charts use:
//   - Chart.yaml is checked like chart.Metadata.Validate (apiVersion v1/v2, name, semver version, type) and
//     its kubeVersion constraint against the target Kubernetes version;
//   - values: values.yaml, then each -f file deep-merged in order, then coalesced with the chart's defaults
//     (a user `null` deletes a default), all read with sigs.k8s.io/yaml as Helm does (numbers are float64);
//     then validated against the chart's values.schema.json, when it has one, with gojsonschema (the validator
//     of Helm 3 up to 3.17), failing with Helm's message;
//   - .Files: Get and GetBytes of the chart's files outside templates/ (a missing file reads as empty, as in Helm);
//   - the top-level object: .Values, .Release {Name, Namespace, IsInstall, IsUpgrade, Revision, Service},
//     .Chart (Chart.yaml fields), .Capabilities {KubeVersion, APIVersions.Has, HelmVersion}, .Template;
//   - functions: Sprig's TxtFuncMap without env/expandenv, plus Helm's toYaml, fromYaml, fromYamlArray, toJson,
//     fromJson, fromJsonArray, include, tpl, required, fail and lookup (empty, as in `helm template`);
//   - every file under templates/ is parsed into one template set named `<chart>/templates/<path>` in Helm's
//     order (deeper paths first, then reverse lexical), every file whose base name does not start with `_` is
//     executed with missingkey=zero, "<no value>" is erased, NOTES.txt is rendered but not printed;
//   - the output is split into documents like releaseutil.SplitManifests, each document's head must parse as
//     YAML, documents are ordered by Helm's InstallOrder (stable; by file name, then position, within a kind), and
//     printed as "---\n# Source: <chart>/templates/<file>\n<document>\n"; with --include-crds the files of crds/
//     come first, verbatim.
//
// Not supported (refused with an error rather than rendered differently): subcharts (charts/, dependencies),
// hooks, library charts, .Files methods other than Get and GetBytes, toToml, --set. .helmignore is not read (it only matters for packaging here).
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/ioutil"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"text/template"

	sv3 "github.com/Masterminds/semver" // v3; GOPATH mode: Debian ships it without /v3
	"github.com/Masterminds/sprig"
	"github.com/xeipuuv/gojsonschema"
	"sigs.k8s.io/yaml"
)

const (
	warnStartDelim = "HELM_ERR_START"
	warnEndDelim   = "HELM_ERR_END"
	// Same limit as Helm's include recursion guard.
	recursionMaxNums = 1000
)

var warnRegex = regexp.MustCompile(warnStartDelim + `((?s).*)` + warnEndDelim)

func warnWrap(warn string) string { return warnStartDelim + warn + warnEndDelim }

// Metadata is Helm's chart.Metadata (the fields templates read as .Chart.*).
type Metadata struct {
	Name         string            `json:"name,omitempty"`
	Home         string            `json:"home,omitempty"`
	Sources      []string          `json:"sources,omitempty"`
	Version      string            `json:"version,omitempty"`
	Description  string            `json:"description,omitempty"`
	Keywords     []string          `json:"keywords,omitempty"`
	Maintainers  []Maintainer      `json:"maintainers,omitempty"`
	Icon         string            `json:"icon,omitempty"`
	APIVersion   string            `json:"apiVersion,omitempty"`
	Condition    string            `json:"condition,omitempty"`
	Tags         string            `json:"tags,omitempty"`
	AppVersion   string            `json:"appVersion,omitempty"`
	Deprecated   bool              `json:"deprecated,omitempty"`
	Annotations  map[string]string `json:"annotations,omitempty"`
	KubeVersion  string            `json:"kubeVersion,omitempty"`
	Dependencies []interface{}     `json:"dependencies,omitempty"`
	Type         string            `json:"type,omitempty"`
}

// Maintainer is Helm's chart.Maintainer.
type Maintainer struct {
	Name  string `json:"name,omitempty"`
	Email string `json:"email,omitempty"`
	URL   string `json:"url,omitempty"`
}

// KubeVersion is Helm's chartutil.KubeVersion.
type KubeVersion struct {
	Version    string
	Major      string
	Minor      string
	GitVersion string
}

func (kv *KubeVersion) String() string { return kv.Version }

// VersionSet is Helm's chartutil.VersionSet.
type VersionSet []string

// Has reports whether the API version (e.g. "apps/v1" or "apps/v1/Deployment") is known.
func (v VersionSet) Has(apiVersion string) bool {
	for _, x := range v {
		if x == apiVersion {
			return true
		}
	}
	return false
}

// HelmVersion mirrors the fields of Helm's version.BuildInfo.
type HelmVersion struct {
	Version      string `json:"version,omitempty"`
	GitCommit    string `json:"git_commit,omitempty"`
	GitTreeState string `json:"git_tree_state,omitempty"`
	GoVersion    string `json:"go_version,omitempty"`
}

// Capabilities is Helm's chartutil.Capabilities.
type Capabilities struct {
	KubeVersion KubeVersion
	APIVersions VersionSet
	HelmVersion HelmVersion
}

// The API versions a v1.20 cluster serves (Helm's default set comes from its client-go scheme).
var defaultAPIVersions = []string{
	"v1", "admissionregistration.k8s.io/v1", "admissionregistration.k8s.io/v1beta1", "apiextensions.k8s.io/v1",
	"apiextensions.k8s.io/v1beta1", "apiregistration.k8s.io/v1", "apps/v1", "authentication.k8s.io/v1",
	"authorization.k8s.io/v1", "autoscaling/v1", "autoscaling/v2beta1", "autoscaling/v2beta2", "batch/v1",
	"batch/v1beta1", "certificates.k8s.io/v1", "coordination.k8s.io/v1", "discovery.k8s.io/v1beta1",
	"events.k8s.io/v1", "events.k8s.io/v1beta1", "networking.k8s.io/v1", "networking.k8s.io/v1beta1",
	"node.k8s.io/v1", "policy/v1beta1", "rbac.authorization.k8s.io/v1", "scheduling.k8s.io/v1",
	"storage.k8s.io/v1", "storage.k8s.io/v1beta1",
}

// InstallOrder is Helm's releaseutil.InstallOrder.
var InstallOrder = []string{
	"PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
	"PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
	"PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole", "ClusterRoleList",
	"ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList",
	"Service", "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
	"HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress", "APIService",
}

type options struct {
	releaseName string
	namespace   string
	chartDir    string
	valueFiles  []string
	includeCRDs bool
	kubeVersion string
	apiVersions []string
}

func main() {
	opts, err := parseArgs(os.Args[1:])
	if err == nil {
		var out string
		out, err = render(opts)
		if err == nil {
			fmt.Print(out)
			return
		}
	}
	fmt.Fprintf(os.Stderr, "Error: %s\n", err)
	os.Exit(1)
}

func parseArgs(args []string) (options, error) {
	opts := options{namespace: "default", kubeVersion: "v1.20.0"}
	var positional []string
	for i := 0; i < len(args); i++ {
		arg := args[i]
		value := func() (string, error) {
			if k, v, ok := strings.Cut(arg, "="); ok && strings.HasPrefix(k, "--") {
				return v, nil
			}
			if i+1 >= len(args) {
				return "", fmt.Errorf("flag %s needs a value", arg)
			}
			i++
			return args[i], nil
		}
		name := arg
		if k, _, ok := strings.Cut(arg, "="); ok && strings.HasPrefix(k, "--") {
			name = k
		}
		var err error
		switch name {
		case "-n", "--namespace":
			opts.namespace, err = value()
		case "-f", "--values":
			var v string
			v, err = value()
			opts.valueFiles = append(opts.valueFiles, v)
		case "--include-crds":
			opts.includeCRDs = true
		case "--kube-version":
			opts.kubeVersion, err = value()
		case "-a", "--api-versions":
			var v string
			v, err = value()
			opts.apiVersions = append(opts.apiVersions, v)
		case "-h", "--help":
			return opts, errors.New("usage: helm-render [NAME] CHART_DIR [-n NAMESPACE] [-f VALUES]... [--include-crds] [--kube-version V] [-a API_VERSION]...")
		default:
			if strings.HasPrefix(arg, "-") {
				return opts, fmt.Errorf("unknown flag: %s (supported: -n/--namespace, -f/--values, --include-crds, --kube-version, -a/--api-versions)", arg)
			}
			positional = append(positional, arg)
		}
		if err != nil {
			return opts, err
		}
	}
	switch len(positional) {
	case 1:
		// `helm template CHART` names the release "release-name".
		opts.releaseName, opts.chartDir = "release-name", positional[0]
	case 2:
		opts.releaseName, opts.chartDir = positional[0], positional[1]
	default:
		return opts, errors.New("expected [NAME] CHART_DIR")
	}
	return opts, nil
}

func readYAMLMap(file string) (map[string]interface{}, error) {
	data, err := ioutil.ReadFile(file)
	if err != nil {
		return nil, err
	}
	vals := map[string]interface{}{}
	if err := yaml.Unmarshal(data, &vals); err != nil {
		return nil, fmt.Errorf("failed to parse %s: %s", file, err)
	}
	if vals == nil {
		vals = map[string]interface{}{}
	}
	return vals, nil
}

var chartName = regexp.MustCompile(`^[a-zA-Z0-9._-]+$`)

func loadChart(dir string) (*Metadata, error) {
	data, err := ioutil.ReadFile(filepath.Join(dir, "Chart.yaml"))
	if err != nil {
		return nil, fmt.Errorf("Chart.yaml file is missing: %s", err)
	}
	md := &Metadata{}
	if err := yaml.UnmarshalStrict(data, md); err != nil {
		return nil, fmt.Errorf("cannot load Chart.yaml: %s", err)
	}
	switch {
	case md.APIVersion == "":
		return nil, errors.New("validation: chart.metadata.apiVersion is required")
	case md.APIVersion != "v1" && md.APIVersion != "v2":
		return nil, fmt.Errorf("validation: chart.metadata.apiVersion %q is not v1 or v2", md.APIVersion)
	case md.Name == "":
		return nil, errors.New("validation: chart.metadata.name is required")
	case !chartName.MatchString(md.Name) || md.Name != filepath.Base(md.Name):
		return nil, fmt.Errorf("validation: chart.metadata.name %q is invalid", md.Name)
	case md.Version == "":
		return nil, errors.New("validation: chart.metadata.version is required")
	case md.Type != "" && md.Type != "application" && md.Type != "library":
		return nil, errors.New("validation: chart.metadata.type must be application or library")
	case md.Type == "library":
		return nil, errors.New("library charts cannot be rendered")
	case len(md.Dependencies) > 0:
		return nil, errors.New("chart dependencies are not supported by this renderer")
	}
	if _, err := sv3.NewVersion(md.Version); err != nil {
		return nil, fmt.Errorf("validation: chart.metadata.version %q is invalid", md.Version)
	}
	if _, err := os.Stat(filepath.Join(dir, "charts")); err == nil {
		return nil, errors.New("subcharts (charts/) are not supported by this renderer")
	}
	return md, nil
}

// mergeMaps is Helm's cli/values mergeMaps: b wins, maps merge deeply.
func mergeMaps(a, b map[string]interface{}) map[string]interface{} {
	out := make(map[string]interface{}, len(a))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		if v, ok := v.(map[string]interface{}); ok {
			if bv, ok := out[k]; ok {
				if bv, ok := bv.(map[string]interface{}); ok {
					out[k] = mergeMaps(bv, v)
					continue
				}
			}
		}
		out[k] = v
	}
	return out
}

// coalesce is Helm's chartutil coalesceValues/coalesceTables: user values (dst) win over chart defaults (src);
// a user `null` removes the default; maps merge deeply.
func coalesce(dst, src map[string]interface{}) map[string]interface{} {
	if dst == nil {
		dst = map[string]interface{}{}
	}
	for key, sv := range src {
		dv, ok := dst[key]
		if !ok {
			dst[key] = deepCopy(sv)
			continue
		}
		if dv == nil {
			delete(dst, key)
			continue
		}
		dm, dok := dv.(map[string]interface{})
		sm, sok := sv.(map[string]interface{})
		if dok && sok {
			dst[key] = coalesce(dm, sm)
		} else if dok != sok && sv != nil {
			fmt.Fprintf(os.Stderr, "coalesce.go: warning: cannot overwrite table with non table for %s (%v)\n", key, sv)
		}
	}
	return dst
}

func deepCopy(v interface{}) interface{} {
	switch v := v.(type) {
	case map[string]interface{}:
		out := make(map[string]interface{}, len(v))
		for k, x := range v {
			out[k] = deepCopy(x)
		}
		return out
	case []interface{}:
		out := make([]interface{}, len(v))
		for i, x := range v {
			out[i] = deepCopy(x)
		}
		return out
	default:
		return v
	}
}

func toYAML(v interface{}) string {
	data, err := yaml.Marshal(v)
	if err != nil {
		// Helm swallows errors inside of a template.
		return ""
	}
	return strings.TrimSuffix(string(data), "\n")
}

func fromYAML(str string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := yaml.Unmarshal([]byte(str), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func fromYAMLArray(str string) []interface{} {
	a := []interface{}{}
	if err := yaml.Unmarshal([]byte(str), &a); err != nil {
		a = []interface{}{err.Error()}
	}
	return a
}

func toJSON(v interface{}) string {
	data, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(data)
}

func fromJSON(str string) map[string]interface{} {
	m := make(map[string]interface{})
	if err := json.Unmarshal([]byte(str), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func fromJSONArray(str string) []interface{} {
	a := []interface{}{}
	if err := json.Unmarshal([]byte(str), &a); err != nil {
		a = []interface{}{err.Error()}
	}
	return a
}

// funcMap is Helm's engine funcMap (placeholders for include/tpl are replaced in initFuncMap).
func funcMap() template.FuncMap {
	f := sprig.TxtFuncMap()
	delete(f, "env")
	delete(f, "expandenv")
	extra := template.FuncMap{
		"toYaml":        toYAML,
		"fromYaml":      fromYAML,
		"fromYamlArray": fromYAMLArray,
		"toJson":        toJSON,
		"fromJson":      fromJSON,
		"fromJsonArray": fromJSONArray,
		"include":       func(string, interface{}) string { return "not implemented" },
		"tpl":           func(string, interface{}) interface{} { return "not implemented" },
		"required":      func(string, interface{}) (interface{}, error) { return "not implemented", nil },
		// `helm template` has no cluster: lookup always answers an empty map.
		"lookup": func(string, string, string, string) (map[string]interface{}, error) {
			return map[string]interface{}{}, nil
		},
	}
	for k, v := range extra {
		f[k] = v
	}
	return f
}

func includeFun(t *template.Template, includedNames map[string]int) func(string, interface{}) (string, error) {
	return func(name string, data interface{}) (string, error) {
		var buf strings.Builder
		if v, ok := includedNames[name]; ok {
			if v > recursionMaxNums {
				return "", fmt.Errorf("rendering template has a nested reference name: %s: unable to execute template", name)
			}
			includedNames[name]++
		} else {
			includedNames[name] = 1
		}
		err := t.ExecuteTemplate(&buf, name, data)
		includedNames[name]--
		return buf.String(), err
	}
}

func tplFun(parent *template.Template, includedNames map[string]int) func(string, interface{}) (string, error) {
	return func(tpl string, vals interface{}) (string, error) {
		top, ok := vals.(map[string]interface{})
		if !ok {
			return "", errors.New("cannot retrieve Template.Name from values inside tpl function: the context is not the top-level object")
		}
		tmpl, _ := top["Template"].(map[string]interface{})
		name, ok := tmpl["Name"].(string)
		if !ok {
			return "", errors.New("cannot retrieve Template.Name from values inside tpl function")
		}
		t, err := parent.Clone()
		if err != nil {
			return "", fmt.Errorf("cannot clone template: %s", err)
		}
		t.Option("missingkey=zero")
		t.Funcs(template.FuncMap{
			"include": includeFun(t, includedNames),
			"tpl":     tplFun(t, includedNames),
		})
		if _, err := t.New(name).Parse(tpl); err != nil {
			return "", fmt.Errorf("cannot parse template %q: %s", tpl, err)
		}
		var buf strings.Builder
		if err := t.ExecuteTemplate(&buf, name, vals); err != nil {
			return "", fmt.Errorf("error during tpl function execution for %q: %s", tpl, err)
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
}

func initFuncMap(t *template.Template) {
	f := funcMap()
	includedNames := make(map[string]int)
	f["include"] = includeFun(t, includedNames)
	f["tpl"] = tplFun(t, includedNames)
	f["required"] = func(warn string, val interface{}) (interface{}, error) {
		if val == nil {
			return val, errors.New(warnWrap(warn))
		} else if s, ok := val.(string); ok && s == "" {
			return val, errors.New(warnWrap(warn))
		}
		return val, nil
	}
	f["fail"] = func(msg string) (string, error) {
		return "", errors.New(warnWrap(msg))
	}
	t.Funcs(f)
}

// sortTemplates is Helm's order: deeper paths first, then reverse lexical.
func sortTemplates(names []string) {
	sort.Slice(names, func(i, j int) bool {
		a, b := names[i], names[j]
		ca, cb := strings.Count(a, "/"), strings.Count(b, "/")
		if ca == cb {
			return a > b
		}
		return ca > cb
	})
}

func cleanupParseError(filename string, err error) error {
	tokens := strings.Split(err.Error(), ": ")
	if len(tokens) == 1 {
		return fmt.Errorf("parse error in (%s): %s", filename, err)
	}
	location := tokens[1]
	errMsg := tokens[len(tokens)-1]
	return fmt.Errorf("parse error at (%s): %s", location, errMsg)
}

func cleanupExecError(filename string, err error) error {
	var execErr template.ExecError
	if !errors.As(err, &execErr) {
		return err
	}
	tokens := strings.SplitN(err.Error(), ": ", 3)
	if len(tokens) != 3 {
		return fmt.Errorf("execution error in (%s): %s", filename, err)
	}
	location := tokens[1]
	if parts := warnRegex.FindStringSubmatch(tokens[2]); len(parts) >= 2 {
		return fmt.Errorf("execution error at (%s): %s", location, parts[1])
	}
	return err
}

var sep = regexp.MustCompile("(?:^|\\s*\n)---\\s*")

// splitManifests is Helm's releaseutil.SplitManifests, keeping the documents' order.
func splitManifests(bigFile string) []string {
	var res []string
	for _, d := range sep.Split(strings.TrimSpace(bigFile), -1) {
		if d == "" {
			continue
		}
		res = append(res, strings.TrimSpace(d))
	}
	return res
}

type manifest struct {
	name    string
	content string
	kind    string
}

type simpleHead struct {
	Version  string `json:"apiVersion"`
	Kind     string `json:"kind,omitempty"`
	Metadata *struct {
		Name        string            `json:"name"`
		Annotations map[string]string `json:"annotations"`
	} `json:"metadata,omitempty"`
}

func listFiles(root string) ([]string, error) {
	var files []string
	err := filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			rel, err := filepath.Rel(root, p)
			if err != nil {
				return err
			}
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	if os.IsNotExist(err) {
		return nil, nil
	}
	sort.Strings(files)
	return files, err
}

func render(opts options) (string, error) {
	md, err := loadChart(opts.chartDir)
	if err != nil {
		return "", err
	}
	kv, err := sv3.NewVersion(opts.kubeVersion)
	if err != nil {
		return "", fmt.Errorf("invalid --kube-version %q: %s", opts.kubeVersion, err)
	}
	if md.KubeVersion != "" {
		constraint, err := sv3.NewConstraint(md.KubeVersion)
		if err != nil {
			return "", fmt.Errorf("invalid kubeVersion %q in Chart.yaml: %s", md.KubeVersion, err)
		}
		if !constraint.Check(kv) {
			return "", fmt.Errorf("chart requires kubeVersion: %s which is incompatible with Kubernetes %s", md.KubeVersion, opts.kubeVersion)
		}
	}

	defaults, err := readYAMLMap(filepath.Join(opts.chartDir, "values.yaml"))
	if err != nil {
		return "", err
	}
	user := map[string]interface{}{}
	for _, file := range opts.valueFiles {
		vals, err := readYAMLMap(file)
		if err != nil {
			return "", err
		}
		user = mergeMaps(user, vals)
	}
	values := coalesce(user, defaults)
	if err := validateSchema(opts.chartDir, md.Name, values); err != nil {
		return "", err
	}

	top := map[string]interface{}{
		"Chart": md,
		"Capabilities": &Capabilities{
			KubeVersion: KubeVersion{
				Version:    "v" + kv.String(),
				Major:      fmt.Sprint(kv.Major()),
				Minor:      fmt.Sprint(kv.Minor()),
				GitVersion: "v" + kv.String(),
			},
			APIVersions: append(append(VersionSet{}, defaultAPIVersions...), opts.apiVersions...),
			HelmVersion: HelmVersion{Version: "v3.13.0", GoVersion: "go1.19"},
		},
		"Release": map[string]interface{}{
			"Name":      opts.releaseName,
			"Namespace": opts.namespace,
			"IsUpgrade": false,
			"IsInstall": true,
			"Revision":  1,
			"Service":   "Helm",
		},
		"Values":    values,
		"Files":     Files{dir: opts.chartDir},
		"Subcharts": map[string]interface{}{},
	}

	templatesDir := filepath.Join(opts.chartDir, "templates")
	files, err := listFiles(templatesDir)
	if err != nil {
		return "", err
	}
	sources := map[string]string{}
	var names []string
	for _, f := range files {
		data, err := ioutil.ReadFile(filepath.Join(templatesDir, filepath.FromSlash(f)))
		if err != nil {
			return "", err
		}
		name := path.Join(md.Name, "templates", f)
		sources[name] = string(data)
		names = append(names, name)
	}
	sortTemplates(names)

	t := template.New("gotpl")
	t.Option("missingkey=zero")
	initFuncMap(t)
	for _, name := range names {
		if _, err := t.New(name).Parse(sources[name]); err != nil {
			return "", cleanupParseError(name, err)
		}
	}
	rendered := map[string]string{}
	for _, name := range names {
		if strings.HasPrefix(path.Base(name), "_") {
			continue
		}
		top["Template"] = map[string]interface{}{"Name": name, "BasePath": path.Join(md.Name, "templates")}
		var buf strings.Builder
		if err := t.ExecuteTemplate(&buf, name, top); err != nil {
			return "", cleanupExecError(name, err)
		}
		rendered[name] = strings.ReplaceAll(buf.String(), "<no value>", "")
	}

	// releaseutil.SortManifests: NOTES.txt is not a manifest; empty files and documents are dropped; every
	// document's head must be YAML; hooks are not supported here.
	var fileNames []string
	for name := range rendered {
		if strings.HasSuffix(name, "NOTES.txt") {
			continue
		}
		fileNames = append(fileNames, name)
	}
	sort.Strings(fileNames)
	var manifests []manifest
	for _, name := range fileNames {
		content := rendered[name]
		if strings.TrimSpace(content) == "" {
			continue
		}
		for _, doc := range splitManifests(content) {
			var head simpleHead
			if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
				return "", fmt.Errorf("YAML parse error on %s: %s", name, err)
			}
			if head.Metadata != nil {
				if _, ok := head.Metadata.Annotations["helm.sh/hook"]; ok {
					return "", fmt.Errorf("%s: hooks are not supported by this renderer", name)
				}
			}
			manifests = append(manifests, manifest{name: name, content: doc, kind: head.Kind})
		}
	}
	order := map[string]int{}
	for i, kind := range InstallOrder {
		order[kind] = i
	}
	sort.SliceStable(manifests, func(i, j int) bool {
		a, b := manifests[i].kind, manifests[j].kind
		first, aok := order[a]
		second, bok := order[b]
		if !aok && !bok {
			return a < b
		}
		if !aok {
			return false
		}
		if !bok {
			return true
		}
		return first < second
	})

	var out strings.Builder
	if opts.includeCRDs {
		crds, err := listFiles(filepath.Join(opts.chartDir, "crds"))
		if err != nil {
			return "", err
		}
		for _, f := range crds {
			if ext := path.Ext(f); ext != ".yaml" && ext != ".yml" && ext != ".json" {
				continue
			}
			data, err := ioutil.ReadFile(filepath.Join(opts.chartDir, "crds", filepath.FromSlash(f)))
			if err != nil {
				return "", err
			}
			fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", path.Join(md.Name, "crds", f), string(data))
		}
	}
	for _, m := range manifests {
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", m.name, m.content)
	}
	return out.String(), nil
}

// validateSchema is Helm's chartutil.ValidateAgainstSchema for a chart without subcharts: the coalesced values,
// as JSON, against values.schema.json; every error on its own line under the chart's name.
func validateSchema(chartDir, chart string, values map[string]interface{}) error {
	schema, err := ioutil.ReadFile(filepath.Join(chartDir, "values.schema.json"))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	valuesJSON, err := json.Marshal(values)
	if err != nil {
		return err
	}
	result, err := gojsonschema.Validate(gojsonschema.NewBytesLoader(schema), gojsonschema.NewBytesLoader(valuesJSON))
	if err != nil {
		return fmt.Errorf("%s: values.schema.json: %s", chart, err)
	}
	if result.Valid() {
		return nil
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "values don't meet the specifications of the schema(s) in the following chart(s):\n%s:\n", chart)
	for _, desc := range result.Errors() {
		fmt.Fprintf(&sb, "- %s\n", desc)
	}
	return errors.New(sb.String())
}

// Files is the part of Helm's .Files the charts use: the chart's files outside templates/, by slash path.
type Files struct{ dir string }

func (f Files) GetBytes(name string) []byte {
	clean := path.Clean(name)
	if strings.HasPrefix(clean, "../") || clean == ".." || path.IsAbs(clean) || strings.HasPrefix(clean, "templates/") {
		return nil
	}
	data, err := ioutil.ReadFile(filepath.Join(f.dir, filepath.FromSlash(clean)))
	if err != nil {
		return nil
	}
	return data
}

func (f Files) Get(name string) string { return string(f.GetBytes(name)) }
