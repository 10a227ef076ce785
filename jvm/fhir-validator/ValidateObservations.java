import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.DefaultProfileValidationSupport;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.SingleValidationMessage;
import ca.uhn.fhir.validation.ValidationOptions;
import ca.uhn.fhir.validation.ValidationResult;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import org.hl7.fhir.common.hapi.validation.support.CommonCodeSystemsTerminologyService;
import org.hl7.fhir.common.hapi.validation.support.InMemoryTerminologyServerValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.SnapshotGeneratingValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.common.hapi.validation.validator.FhirInstanceValidator;

/**
 * Validates FHIR R4 resources, one JSON document per line of standard input: Observations against a
 * profile (default: the core blood-pressure profile, http://hl7.org/fhir/StructureDefinition/bp),
 * other resources against their core definition, with the
 * HL7 validator's logic, offline: core profiles and code systems from HAPI's bundled resources,
 * no terminology server (LOINC codes are reported as unchecked, as warnings).
 *
 * <p>Prints one line per message, tab-separated: the input's line number (from 1), the severity
 * (information, warning, error, fatal), the location and the text; then a last line
 * {@code checked N}. Exit status 0 when every resource was validated, whatever it held.
 *
 * <pre>java -cp "$(cat build/fhir-validator/classpath)" ValidateObservations.java [profile] &lt; observations.ndjson</pre>
 */
public class ValidateObservations {
  /** A validator grows with each call (cached parses): one is rebuilt after this many. */
  private static final int CALLS_PER_VALIDATOR = 100;

  private static FhirValidator newValidator(FhirContext context) {
    ValidationSupportChain chain = new ValidationSupportChain(
        new DefaultProfileValidationSupport(context),
        new CommonCodeSystemsTerminologyService(context),
        new InMemoryTerminologyServerValidationSupport(context),
        new SnapshotGeneratingValidationSupport(context));
    FhirValidator validator = context.newValidator();
    validator.registerValidatorModule(new FhirInstanceValidator(chain));
    return validator;
  }

  private static String oneLine(String text) {
    return text == null ? "" : text.replace('\t', ' ').replace('\n', ' ').replace('\r', ' ');
  }

  public static void main(String[] args) throws Exception {
    String profile = args.length > 0 ? args[0] : "http://hl7.org/fhir/StructureDefinition/bp";
    FhirContext context = FhirContext.forR4();
    ValidationOptions options = new ValidationOptions().addProfile(profile);
    ValidationOptions core = new ValidationOptions();
    FhirValidator validator = null;
    BufferedReader in = new BufferedReader(new InputStreamReader(System.in, StandardCharsets.UTF_8));
    StringBuilder out = new StringBuilder();
    int line = 0;
    int checked = 0;
    for (String json; (json = in.readLine()) != null; ) {
      line++;
      if (json.isBlank()) {
        continue;
      }
      if (validator == null || checked % CALLS_PER_VALIDATOR == 0) {
        validator = newValidator(context);
      }
      // An Observation against the profile; another resource (a DetectedIssue of the alert
      // topic) against its core definition.
      boolean observation = json.contains("\"resourceType\":\"Observation\"")
          || json.contains("\"resourceType\": \"Observation\"") || !json.contains("\"resourceType\"");
      ValidationResult result = validator.validateWithResult(json, observation ? options : core);
      checked++;
      for (SingleValidationMessage message : result.getMessages()) {
        out.append(line).append('\t')
            .append(message.getSeverity().getCode()).append('\t')
            .append(oneLine(message.getLocationString())).append('\t')
            .append(oneLine(message.getMessage())).append('\n');
      }
    }
    out.append("checked ").append(checked).append('\n');
    System.out.print(out);
  }
}
