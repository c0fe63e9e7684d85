// Validates Gateway API objects (gateway.networking.k8s.io) offline against the schemas that
// @kubernetes-models/gateway-api compiles from the Gateway API's Go types (types, enums,
// required fields, lengths, patterns, list sizes). It does NOT reject unknown fields.
// Run by deploy/validate.sh from the cached install: node gateway-api.mjs OBJECTS.json
// where OBJECTS.json is [{"source": "...", "object": {...}}, ...]. Exit 1 on any failure.
import { readFileSync } from "node:fs";

const items = JSON.parse(readFileSync(process.argv[2], "utf8"));
let failed = 0;
for (const { source, object } of items) {
  const [group, version] = object.apiVersion.split("/");
  const what = `${source}: ${object.kind}/${object.metadata?.name} (${object.apiVersion})`;
  let Model;
  try {
    const mod = await import(`@kubernetes-models/gateway-api/${group}/${version}/${object.kind}`);
    Model = mod[object.kind];
  } catch (e) {
    console.log(`FAIL ${what}: no schema for this kind and version (${e.code ?? e.message})`);
    failed++;
    continue;
  }
  try {
    new Model(object).validate();
    console.log(`ok   ${what}`);
  } catch (e) {
    console.log(`FAIL ${what}: ${e.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
