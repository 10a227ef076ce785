import java.io.FileInputStream;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

/**
 * Grants the local stack's pipeline user what it needs and nothing more: every operation on
 * the topics whose names start with one of the given prefixes (read, write, create, delete
 * records), and reading with consumer groups of any name (Spark names its own). Run by
 * stack/localstack.py with Java's source launcher against the broker's own kafka-clients:
 *
 *     java -cp 'libs/*' stack/KafkaAcls.java ADMIN_PROPERTIES USER PREFIX...
 *
 * Creating an ACL that exists already is a no-op, so a second run changes nothing.
 */
public class KafkaAcls {
    public static void main(String[] args) throws Exception {
        if (args.length < 3) {
            System.err.println("usage: KafkaAcls ADMIN_PROPERTIES USER PREFIX...");
            System.exit(2);
        }
        Properties props = new Properties();
        try (FileInputStream in = new FileInputStream(args[0])) {
            props.load(in);
        }
        String principal = "User:" + args[1];
        List<AclBinding> bindings = new ArrayList<>();
        for (int i = 2; i < args.length; i++) {
            bindings.add(allow(new ResourcePattern(ResourceType.TOPIC, args[i], PatternType.PREFIXED), principal, AclOperation.ALL));
        }
        bindings.add(allow(new ResourcePattern(ResourceType.GROUP, "*", PatternType.LITERAL), principal, AclOperation.READ));
        bindings.add(allow(new ResourcePattern(ResourceType.GROUP, "*", PatternType.LITERAL), principal, AclOperation.DESCRIBE));
        try (Admin admin = Admin.create(props)) {
            admin.createAcls(bindings).all().get();
        }
        for (AclBinding binding : bindings) {
            System.out.println(binding.pattern() + " " + binding.entry().operation());
        }
    }

    private static AclBinding allow(ResourcePattern pattern, String principal, AclOperation operation) {
        return new AclBinding(pattern, new AccessControlEntry(principal, "*", operation, AclPermissionType.ALLOW));
    }
}
